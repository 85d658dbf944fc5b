"""Example prod inventory: replace every *.example.invalid host with yours (docs/inventories.md).

Each host connects over SSH as a sudo-capable user (group_data/prod.py sets _sudo). The database hosts are one
list: inventory/prod.primary records which of them is the primary (the first until a switchover or failover
rewrites it; commit that change), the others are replicas cloned from it; pgbouncer hosts front them.
Unedited, this file refuses to run.
"""

from pathlib import Path

from inventory._placeholders import require_real_hosts
from inventory._primary import database_groups

_database_hosts = [
    ("db-1.prod.example.invalid", {"ssh_user": "deploy"}),
    ("db-2.prod.example.invalid", {"ssh_user": "deploy"}),
    ("db-3.prod.example.invalid", {"ssh_user": "deploy"}),
]
primary, replicas = database_groups(Path(__file__).with_suffix(".primary"), _database_hosts)
pgbouncer = [("pgbouncer-1.prod.example.invalid", {"ssh_user": "deploy"})]

require_real_hosts(__file__, primary, replicas, pgbouncer)
