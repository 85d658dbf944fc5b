"""Rolling minor update of PostgreSQL: `pyinfra inventory/<env>.py minor_update.py` (docs/postgres.md).

Replicas first, one at a time, then the primary, each to the candidate version in its package index: refresh the
index first (`pyinfra inventory/<env>.py exec -- apt-get update`), review with `--dry`, then run.
"""

from pyinfra import config, host

from deploys.base import baseline
from deploys.postgres import minor_update
from deploys.replication import check_reality
from deploys.knobs import check_inventory
from deploys.transport import send_without_delay

config.REQUIRE_PYINFRA_VERSION = "~=3.10"
config.FAIL_PERCENT = 0  # the turns need every database host

send_without_delay()
check_inventory()
baseline()
if {"primary", "replicas"} & set(host.groups):
    check_reality()  # the primary restarts last: it must be the live one
    minor_update()
