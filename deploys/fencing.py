"""Fencing on every database host (hostside/fence.py): a resident check that stops a primary the WAL archive shows
replaced by a promoted replica, and a guard on PostgreSQL's unit that lets a fenced cluster start only as a standby."""

import io
import json
import os

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, systemd

from deploys.archive import PROGRAM as ARCHIVER
from deploys.datasource import source_of
from deploys.postgres import DEFAULTS as POSTGRES_DEFAULTS
from hostside import fence

DEFAULTS = {
    "postgres_major": POSTGRES_DEFAULTS["postgres_major"],
    "postgres_cluster": POSTGRES_DEFAULTS["postgres_cluster"],
    # How often a primary asks the archive whether it was replaced: with the S3 request's own time, the bound on
    # how long a cut-off primary that regains the network keeps accepting writes (docs/failover.md).
    "fence_check_interval_s": 10,
}
PROGRAM = f"{os.path.dirname(ARCHIVER)}/fence.py"  # beside the archiver it imports
UNIT = "mcp-fence"


@deploy("Fencing", data_defaults=DEFAULTS)
def fencing():
    interval = host.data.fence_check_interval_s
    if not isinstance(interval, int) or not 1 <= interval <= 300:
        raise DeployError(f"{host.name}: {source_of('fence_check_interval_s')}: fence_check_interval_s = {interval!r}; "
                          "use whole seconds from 1 to 300 (it bounds how long a replaced primary keeps writing)")
    major, cluster = host.data.postgres_major, host.data.postgres_cluster
    postgres_unit = f"postgresql@{major}-{cluster}"
    files.put(name="The fence", src="hostside/fence.py", dest=PROGRAM, mode="755")
    config = files.put(name="The fence's configuration", dest=fence.CONFIG, mode="644", src=io.StringIO(json.dumps(
        {"unit": postgres_unit, "cluster": f"{major}/{cluster}",
         "data_directory": f"/var/lib/postgresql/{major}/{cluster}"}, indent=1, sort_keys=True) + "\n"))
    guard = files.template(name="A fenced cluster starts only as a standby", src="templates/postgresql-fence.conf.j2",
                           dest=f"/etc/systemd/system/{postgres_unit}.service.d/mcp-fence.conf", create_remote_dir=True,
                           mode="644", program=PROGRAM)
    unit = files.template(name="The fence's unit", src="templates/fence.service.j2",
                          dest=f"/etc/systemd/system/{UNIT}.service", mode="644", program=PROGRAM, interval_s=interval)
    if guard.will_change or unit.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    # A new fence.py or archiver needs no restart here: the running fence sees its code change and exits.
    systemd.service(name="The fence runs and starts at boot", service=f"{UNIT}.service", running=True, enabled=True,
                    restarted=config.will_change or unit.will_change)
