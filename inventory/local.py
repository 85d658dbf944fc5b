"""The local fleet (`fleet up`, or `make local`): hosts and addresses come from fleet/topology.yaml; which database
host is the primary, from the record the failover commands keep in .fleet/primary (the topology's until then)."""

from fleet.inventory import primary_record, pyinfra_groups
from inventory._primary import database_groups

_groups = pyinfra_groups()

primary, replicas = database_groups(primary_record(), _groups["primary"] + _groups["replicas"])
pgbouncer = _groups["pgbouncer"]
s3 = _groups["s3"]
