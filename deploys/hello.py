"""The first proof deploy (Foundation): a directory, a package, a templated file and a systemd unit.

    pyinfra -y inventories/lab.py deploys/hello.py
"""

from vlmfleet.stages.hello import hello

hello()
