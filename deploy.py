"""The MCP Portal database tier: `pyinfra inventory/<env>.py deploy.py`.

Thin on purpose: which component each host gets follows from its inventory groups (database, pgbouncer, etcd);
the components live in deploys/, their knobs in deploys/knobs.py (set in group_data/). Who leads is Patroni's to
say, read at plan time.
"""

from pyinfra import config, host

from deploys import etcd
from deploys.archive import wal_archiver
from deploys.backups import base_backups, recent_backup
from deploys.base import baseline
from deploys.encryption import data_keys
from deploys.heartbeat import heartbeat_table, heartbeat_writer
from deploys.hostside import programs
from deploys.knobs import check_inventory
from deploys.monitoring import node_metrics, pgbouncer_metrics, postgres_metrics
from deploys.ordering import barrier
from deploys.patroni import leader, patroni
from deploys.pgbouncer import databases, pooled_connections, pooler
from deploys.rebuild import scrubbed_copy_loaded
from deploys.postgres import server_packages
from deploys.roles import roles
from deploys.routing import router
from deploys.schema import migrations, portal_jobs
from deploys.tenant_module import tenant_module
from deploys.tls import DATABASE_ROLE, certificates
from deploys.transport import send_without_delay

config.REQUIRE_PYINFRA_VERSION = "~=3.10"  # and config.py: one failed host stops the run

database = "database" in host.groups
pooling = "pgbouncer" in host.groups
member = host in etcd.members()

send_without_delay()
check_inventory()  # every host's knobs, before any fact or operation
baseline()
programs_changed = programs() if database or pooling else False
if database:
    server_packages()
    tenant_module()  # before the migrations, which create its extension
    archiving = wal_archiver(programs_changed=programs_changed)
    certificate = certificates(owner="postgres", role=DATABASE_ROLE)
if member:
    etcd.etcd_member()
barrier(name="etcd runs before Patroni starts")
if database:
    leading = host.name == leader()
    patroni(archive=archiving, reload_when=certificate, pooled=pooled_connections())
    base_backups()
copy_loaded = False
if database and leading:  # a first deploy's leader has bootstrapped the cluster by now
    roles()
    databases()
    copy_loaded = scrubbed_copy_loaded()  # a staging rebuild's (rebuild_staging.py), into the new cluster
    heartbeat_table()
if database:
    migrations(leading)  # the tools on every member, the changes on the leader
    portal_jobs()
    data_keys(leading, first_key=not copy_loaded)  # a scrubbed copy brings staging's own
if database and leading:
    recent_backup()  # with the schema in place: point-in-time recovery from the first deploy on
if pooling:
    pooler(programs_changed)  # first: HAProxy's statistics socket is for PgBouncer's user, which its package makes
    router()
    heartbeat_writer()
if database or pooling or member:  # not the local fleet's S3 endpoint
    node_metrics(database_host=database)
if database:
    postgres_metrics()
if pooling:
    pgbouncer_metrics()
