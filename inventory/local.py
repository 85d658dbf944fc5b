"""The local fleet (`fleet up`, or `make local`): hosts and addresses come from fleet/topology.yaml. The database
hosts are one group: Patroni decides which of them leads (the first listed bootstraps the cluster)."""

from fleet.inventory import pyinfra_groups

_groups = pyinfra_groups()

database = _groups["database"]
pgbouncer = _groups["pgbouncer"]
etcd = _groups["etcd"]  # empty: the database hosts are the etcd members
s3 = _groups["s3"]
