"""Fencing on every database host (hostside/fence.py): a resident check that stops a primary the WAL archive shows
replaced by a promoted replica, and a guard on PostgreSQL's unit that lets a fenced cluster start only as a standby."""

import io
import json

from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from deploys.knobs import knobs
from deploys.postgres import cluster
from hostside import fence, layout

PROGRAM = layout.program("fence")
UNIT = "mcp-fence"


@deploy("Fencing")
def fencing():
    pg, interval = cluster(), knobs().fence_check_interval_s
    config = files.put(name="The fence's configuration", dest=fence.CONFIG, mode="644", src=io.StringIO(json.dumps(
        {"unit": pg.unit, "cluster": pg.label, "data_directory": pg.data_directory}, indent=1, sort_keys=True) + "\n"))
    guard = files.template(name="A fenced cluster starts only as a standby", src="templates/postgresql-fence.conf.j2",
                           dest=f"/etc/systemd/system/{pg.unit}.service.d/mcp-fence.conf", create_remote_dir=True,
                           mode="644", program=PROGRAM)
    unit = files.template(name="The fence's unit", src="templates/fence.service.j2",
                          dest=f"/etc/systemd/system/{UNIT}.service", mode="644", program=PROGRAM, interval_s=interval)
    if guard.will_change or unit.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    # New host-side code needs no restart here: the running fence sees its code change and exits.
    systemd.service(name="The fence runs and starts at boot", service=f"{UNIT}.service", running=True, enabled=True,
                    restarted=config.will_change or unit.will_change)
