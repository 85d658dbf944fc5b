"""Rolling minor update of PostgreSQL: `pyinfra inventory/<env>.py minor_update.py` (docs/postgres.md).

Replicas first, one at a time, then the leader, each to the candidate version in its package index and restarted
through Patroni: refresh the index first (`pyinfra inventory/<env>.py exec -- apt-get update`), review with `--dry`,
then run. To spare the clients the leader's restart, switch over first (mcp-ha switchover) and run again.
"""

from pyinfra import config, host

from deploys.base import baseline
from deploys.knobs import check_inventory
from deploys.patroni import leader
from deploys.postgres import minor_update
from deploys.transport import send_without_delay

config.REQUIRE_PYINFRA_VERSION = "~=3.10"  # and config.py: the turns need every database host

send_without_delay()
check_inventory()
baseline()
if "database" in host.groups:
    minor_update(leading=host.name == leader())
