"""Run the driver stage alone (after preflight, which changes nothing), reboot included, batch by batch:
`pyinfra inventories/prod.py deploys/driver.py --data nvidia_driver_branch=580`. Off unless nvidia_driver_branch
is set (docs/driver.md)."""

from vlmfleet.stages.run import run_stages

run_stages(["driver"])
