"""Point-in-time restore onto one host: `pyinfra inventory/<env>.py restore.py --data restore_host=HOST
--data restore_target_time='2026-11-25 16:00:00+00'` (docs/backups.md).

The restored cluster is new (restore_cluster, on restore_port), replays WAL from the tier's archive to the
target, is promoted, and never archives: a clone must not write into its source's archive.
"""

from pyinfra import config, host, inventory
from pyinfra.api.exceptions import DeployError

from deploys.backups import restore
from deploys.knobs import check_inventory, knobs
from deploys.transport import send_without_delay

config.REQUIRE_PYINFRA_VERSION = "~=3.10"

send_without_delay()
check_inventory()
target = knobs().restore_host
database_hosts = [h.name for h in inventory.get_group("database", [])]
if target not in database_hosts:
    raise DeployError(f"restore.py needs --data restore_host=HOST, one of the inventory's database hosts "
                      f"({', '.join(database_hosts)}); got {target!r}")
if host.name == target:
    restore()
