"""First proof deploy: a directory, a package, a templated file and a systemd unit running a trivial service.

It proves the whole path (inventory, group data, templates loaded by absolute path, idempotent operations,
restarts gated on change) before the real stages land. The service answers ``GET /`` on ``hello_port`` with
the host's identity page.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from .. import __version__
from ..paths import template

HELLO_DIR = "/var/lib/vlmfleet/hello"
UNIT = "vlmfleet-hello.service"


@deploy("vlmfleet hello")
def hello() -> None:
    """Lay down the vlmfleet folders, jq, an identity page and a service that serves it.

    Data keys (group_data/all.py): ``hello_port`` (e.g. 9099).
    """
    port = int(host.data.get("hello_port", 9099))

    files.directory(name="Create /etc/vlmfleet", path="/etc/vlmfleet", mode="755")
    files.directory(name=f"Create {HELLO_DIR}", path=HELLO_DIR, mode="755")

    apt.packages(name="Install jq", packages=["jq"], update=True, cache_time=24 * 3600)

    page = files.template(
        name="Render the identity page",
        src=template("hello/index.json.j2"),
        dest=f"{HELLO_DIR}/index.json",
        mode="644",
        host_name=host.name,
        groups=sorted(host.groups),
        version=__version__,
    )
    unit = files.template(
        name=f"Install {UNIT}",
        src=template("hello/vlmfleet-hello.service.j2"),
        dest=f"/etc/systemd/system/{UNIT}",
        mode="644",
        port=port,
        directory=HELLO_DIR,
    )
    systemd.daemon_reload(name="Reload systemd units", _if=unit.did_change)
    systemd.service(name=f"Enable and start {UNIT}", service=UNIT, running=True, enabled=True)
    systemd.service(
        name=f"Restart {UNIT} after a change",
        service=UNIT,
        restarted=True,
        _if=any_changed(unit, page),
    )
