"""Example prod inventory: replace every *.example.invalid host with yours (docs/inventories.md).

Each host connects over SSH as a sudo-capable user (group_data/prod.py sets _sudo). Exactly one host in
primary; the replicas clone from it; pgbouncer hosts front both. Unedited, this file refuses to run.
"""

from inventory._placeholders import require_real_hosts

primary = [("db-1.prod.example.invalid", {"ssh_user": "deploy"})]
replicas = [
    ("db-2.prod.example.invalid", {"ssh_user": "deploy"}),
    ("db-3.prod.example.invalid", {"ssh_user": "deploy"}),
]
pgbouncer = [("pgbouncer-1.prod.example.invalid", {"ssh_user": "deploy"})]

require_real_hosts(__file__, primary, replicas, pgbouncer)
