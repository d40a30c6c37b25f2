"""The local lab's hosts, read from the data `vlmfleet lab up` writes, grouped by serving profile.

    sudo .venv/bin/vlmfleet lab up
    .venv/bin/pyinfra -y inventories/lab.py deploys/vlm.py

By default h1 (2xA10) and h2 (1xL40S) are in group qwen7b, h3 (4xA100-40) in qwen72b_awq; VLMFLEET_LAB_GPUS
changes that (see vlmfleet/lab/layout.py). Every host is also in the group `lab` (this file's name):
group_data/lab.py points the fleet at the lab's stand-ins and mirrors.
"""

from vlmfleet.lab.inventory import groups

globals().update(groups())  # qwen7b = [("h1", {...}), ("h2", {...})], qwen72b_awq = [("h3", {...})]
