"""The local lab's hosts (h1, h2, ...), read from the data `vlmfleet lab up` writes.

    sudo .venv/bin/vlmfleet lab up
    .venv/bin/pyinfra -y inventories/lab.py deploys/vlm.py
"""

from vlmfleet.lab.inventory import pyinfra_hosts

lab_hosts = pyinfra_hosts()
