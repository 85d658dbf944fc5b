"""Example staging inventory: a smaller copy of prod (one replica) for rebuild and failover drills.

Replace every *.example.invalid host with yours (docs/inventories.md); unedited, this file refuses to run.
The deploy user needs sudo (group_data/staging.py sets _sudo).
"""

from inventory._placeholders import require_real_hosts

_deploy_user = {"ssh_user": "deploy"}

primary = [("db-1.staging.example.invalid", _deploy_user)]
replicas = [("db-2.staging.example.invalid", _deploy_user)]
pgbouncer = [("pgbouncer-1.staging.example.invalid", _deploy_user)]

require_real_hosts(__file__, primary, replicas, pgbouncer)
