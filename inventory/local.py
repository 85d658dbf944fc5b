"""The local fleet (`fleet up`, or `make local`): hosts and addresses come from fleet/topology.yaml."""

from fleet.inventory import pyinfra_groups

_groups = pyinfra_groups()

primary = _groups["primary"]
replicas = _groups["replicas"]
pgbouncer = _groups["pgbouncer"]
s3 = _groups["s3"]
