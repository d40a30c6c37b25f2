"""Helpers for lab-tier tests: ssh into lab hosts, talk to their servers and to the hub stand-in."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import requests

PNG = (Path(__file__).resolve().parent.parent / "vlmfleet/assets/health-check.png").read_bytes()
SERVED = {"qwen7b": "qwen2.5-vl-7b-instruct", "qwen72b_awq": "qwen2.5-vl-72b-instruct-awq"}


def ssh(lab: dict, host: str, command: str, check: bool = True, input: str | None = None) -> str:
    proc = subprocess.run(["ssh", "-F", lab["ssh_config"], host, command], capture_output=True, text=True,
                          input=input, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{host}: `{command}` failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def started_at(lab: dict) -> dict[str, str]:
    """Container start time per host (docker's State.StartedAt of the vLLM container)."""
    out = {}
    for h in lab["hosts"]:
        name = "vllm-" + h["group"].replace("_", "-")
        out[h["name"]] = ssh(lab, h["name"], f"sudo docker inspect --format '{{{{.State.StartedAt}}}}' {name}").strip()
    return out


def api_key(lab: dict) -> str:
    return Path(lab["api_key_file"]).read_text().strip()


def chat(lab: dict, host: dict, content) -> requests.Response:
    return requests.post(f"http://{host['address']}:8000/v1/chat/completions", timeout=30,
                         headers={"Authorization": f"Bearer {api_key(lab)}"},
                         json={"model": SERVED[host["group"]], "messages": [{"role": "user", "content": content}]})


def image_content() -> list:
    return [{"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}}]


def hub(lab: dict, path: str, **kw) -> requests.Response:
    method = "post" if "json" in kw else "get"
    return getattr(requests, method)(f"{lab['hub_url']}{path}", timeout=10, **kw)
