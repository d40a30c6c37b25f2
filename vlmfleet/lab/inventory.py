"""Connection data of the running lab, for ``inventories/lab.py`` and the lab tests.

``vlmfleet lab up`` writes ``<lab dir>/run/inventory.json``; this module turns it into pyinfra host tuples.
"""

from __future__ import annotations

import json

from .config import LabConfig


class LabNotUp(SystemExit):
    """Raised (as a clean exit with a message) when no lab is running."""


def load(cfg: LabConfig | None = None) -> dict:
    cfg = cfg or LabConfig.from_env()
    try:
        return json.loads(cfg.inventory_file.read_text())
    except FileNotFoundError:
        raise LabNotUp(
            f"vlmfleet: no lab is running ({cfg.inventory_file} is missing); start it with "
            f"`sudo .venv/bin/vlmfleet lab up` (or `make lab`)"
        ) from None


def groups(data: dict | None = None) -> dict[str, list[tuple[str, dict]]]:
    """Hosts by profile group (``{"qwen7b": [...], "qwen72b_awq": [...]}``), as `lab up` laid them out; the
    operations host (group ``ops``) is in groups ``monitoring`` and ``gateway``."""
    data = data or load()
    hosts = dict(pyinfra_hosts(data))
    out: dict[str, list[tuple[str, dict]]] = {}
    for h in data["hosts"]:
        out.setdefault(h.get("group", "qwen7b"), []).append((h["name"], hosts[h["name"]]))
    for h in data.get("ops", []):
        for g in ("monitoring", "gateway"):
            out.setdefault(g, []).append((h["name"], hosts[h["name"]]))
    return out


def pyinfra_hosts(data: dict | None = None) -> list[tuple[str, dict]]:
    """``[("h1", {"ssh_hostname": "10.77.0.11", ...}), ...]`` for a pyinfra inventory file.

    Strict host key checking against the lab's known_hosts; the hosts' user gets root by sudo.
    """
    data = data or load()
    common = {
        "ssh_user": data["ssh_user"],
        "ssh_key": data["ssh_key"],
        "ssh_known_hosts_file": data["known_hosts"],
        "ssh_strict_host_key_checking": "yes",
        "_sudo": True,
    }
    return [(h["name"], {"ssh_hostname": h["address"], **common}) for h in [*data["hosts"], *data.get("ops", [])]]
