"""Example staging inventory: a smaller copy of prod (one replica) for rebuild and failover drills.

Replace every *.example.invalid host with yours (docs/inventories.md); unedited, this file refuses to run.
The deploy user needs sudo (group_data/staging.py sets _sudo).
"""

from pathlib import Path

from inventory._placeholders import require_real_hosts
from inventory._primary import database_groups

_deploy_user = {"ssh_user": "deploy"}

# Which database host is primary: inventory/staging.primary (the first until a switchover or failover rewrites it).
primary, replicas = database_groups(Path(__file__).with_suffix(".primary"),
                                    [("db-1.staging.example.invalid", _deploy_user),
                                     ("db-2.staging.example.invalid", _deploy_user)])
pgbouncer = [("pgbouncer-1.staging.example.invalid", _deploy_user)]

require_real_hosts(__file__, primary, replicas, pgbouncer)
