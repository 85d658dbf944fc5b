"""Example prod inventory: replace every *.example.invalid host with yours (docs/inventories.md).

Each host connects over SSH as a sudo-capable user (group_data/prod.py sets _sudo). The database hosts are one
group: Patroni decides which of them leads (the first listed bootstraps a new cluster) and they are the three
etcd members; the pgbouncer hosts each run PgBouncer and HAProxy, and clients may use any of them.
Unedited, this file refuses to run.
"""

from inventory._placeholders import require_real_hosts

_deploy_user = {"ssh_user": "deploy"}

database = [
    ("db-1.prod.example.invalid", _deploy_user),
    ("db-2.prod.example.invalid", _deploy_user),
    ("db-3.prod.example.invalid", _deploy_user),
]
pgbouncer = [
    ("pgbouncer-1.prod.example.invalid", _deploy_user),
    ("pgbouncer-2.prod.example.invalid", _deploy_user),
]

require_real_hosts(__file__, database, pgbouncer)
