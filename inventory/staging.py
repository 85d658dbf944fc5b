"""Example staging inventory: a smaller copy of prod (two database hosts) for rebuild and failover drills.

Replace every *.example.invalid host with yours (docs/inventories.md); unedited, this file refuses to run.
The deploy user needs sudo (group_data/staging.py sets _sudo). etcd needs three members to survive the loss of
one: the two database hosts and a small third host that runs etcd only.
"""

from inventory._placeholders import require_real_hosts

_deploy_user = {"ssh_user": "deploy"}

database = [("db-1.staging.example.invalid", _deploy_user), ("db-2.staging.example.invalid", _deploy_user)]
etcd = [*database, ("etcd-3.staging.example.invalid", _deploy_user)]
pgbouncer = [("pgbouncer-1.staging.example.invalid", _deploy_user)]

require_real_hosts(__file__, database, etcd, pgbouncer)
