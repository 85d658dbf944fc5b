"""The MCP Portal database tier: `pyinfra inventory/<env>.py deploy.py`.

Thin on purpose: which component each host gets follows from its inventory groups; the components
live in deploys/, their knobs in group_data/.
"""

from pyinfra import config, host

from deploys.archive import wal_archiver
from deploys.backups import base_backups
from deploys.base import baseline
from deploys.encryption import data_keys
from deploys.fencing import fencing
from deploys.heartbeat import heartbeat_table, heartbeat_writer
from deploys.hostside import programs
from deploys.knobs import check_inventory
from deploys.monitoring import node_metrics, pgbouncer_metrics, postgres_metrics
from deploys.ordering import barrier
from deploys.pgbouncer import databases, pooled_connections, pooler
from deploys.postgres import configuration, server_packages
from deploys.replication import slots, standby, standby_settings, synchronous_settings
from deploys.roles import roles
from deploys.schema import migrations, portal_jobs
from deploys.tls import certificates
from deploys.transport import send_without_delay

config.REQUIRE_PYINFRA_VERSION = "~=3.10"
# One unreachable host stops the run before any operation: a tier half-deployed around a missing host is
# worse than no change (the primary's slots and the replicas' clones depend on each other).
config.FAIL_PERCENT = 0

DATABASE_GROUPS = {"primary", "replicas"}
TIER_GROUPS = DATABASE_GROUPS | {"pgbouncer"}
replica = "replicas" in host.groups

send_without_delay()
check_inventory()  # every host's knobs, before any fact or operation
baseline()
if DATABASE_GROUPS & set(host.groups):
    server_packages()
    archiving = wal_archiver(programs_changed=programs())
    fencing()
    configuration(reload_when=certificates(owner="postgres"), pooled=pooled_connections(),
                  extra_settings={**archiving, **synchronous_settings(), **(standby_settings() if replica else {})})
    base_backups()
if "primary" in host.groups:
    roles()
    slots()
    databases()
    heartbeat_table()
    migrations()
if DATABASE_GROUPS & set(host.groups):
    barrier(name="The primary's roles and slots exist before a replica clones")
if replica:
    standby()
if DATABASE_GROUPS & set(host.groups):
    portal_jobs()
    data_keys()
if "pgbouncer" in host.groups:
    pooler()
    heartbeat_writer()
if TIER_GROUPS & set(host.groups):  # not the local fleet's S3 endpoint
    node_metrics(database_host=bool(DATABASE_GROUPS & set(host.groups)))
if DATABASE_GROUPS & set(host.groups):
    postgres_metrics()
if "pgbouncer" in host.groups:
    pgbouncer_metrics()
