"""The staging rebuild (`make staging-rebuild`; docs/backups.md, "Staging rebuild"): production's data as of a
moment, scrubbed in a private scratch cluster before anything of staging's holds it, then loaded into a new Patroni
cluster that archives into a new prefix of its own. rebuild_staging.py makes the scrubbed copy and clears the old
cluster; deploy.py then makes the new cluster and loads the copy (`scrubbed_copy_loaded`)."""

import time

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import File
from pyinfra.operations import server, systemd

from deploys import ship
from deploys.archive import GENERATION, archive_generation, archive_prefix
from deploys.backups import restore
from deploys.etcd import etcd_client, members as etcd_members
from deploys.knobs import knobs
from deploys.ordering import barrier
from deploys.patroni import ETCD_NAMESPACE, database_hosts, members
from deploys.postgres import cluster
from hostside import layout

SCRATCH = "staging_scrub"  # the scratch cluster's name: production's values live there only, and briefly
DUMP_DIR = "/var/lib/postgresql/staging-rebuild"
DUMP = f"{DUMP_DIR}/portal.dump"
# The new cluster's generation: one per rebuild run (every host plans with this one value), in the archive prefix.
GENERATION_NOW = time.strftime("%Y%m%d%H%M%S", time.gmtime())


def refuse_a_wrong_inventory():
    """Before any change: a rebuild needs a source, and never runs on production's own inventory or archive."""
    k = knobs()
    if not k.restore_source_prefix:
        raise DeployError(f"{host.name}: rebuild_staging.py needs the source archive: --data "
                          "restore_source_prefix=PREFIX (and restore_source_bucket when it is another bucket)")
    problem = inventory_problem(host.groups, f"s3://{k.restore_source_bucket or k.wal_archive_bucket}/{k.restore_source_prefix}",
                                f"s3://{k.wal_archive_bucket}/{archive_prefix(archive_generation())}")
    if problem:
        raise DeployError(f"{host.name}: {problem}")


def inventory_problem(groups, source, own):
    """Why a rebuild from the archive `source` must not replace the cluster of an inventory whose host is in `groups`
    and archives into `own`; None when it may."""
    if "prod" in groups:
        return ("rebuild_staging.py replaces the cluster of the inventory it runs on, and this is production's "
                "(group prod); run it with the staging inventory")
    if source == own:
        return (f"the source {source} is this inventory's own archive: the rebuild would replace the cluster it "
                "reads; run it with the staging inventory, with production's prefix as the source")
    return None


@deploy("Scrubbed copy of the source")
def scrubbed_copy():
    """On the host that will bootstrap the new cluster: the source restored into a scratch cluster no one else can
    reach, scrubbed (hostside/staging_scrub.py), dumped for the new cluster; the scratch cluster dropped, whatever
    happened."""
    k = knobs()
    scratch = layout.Cluster(k.postgres_major, SCRATCH)
    restore(cluster_name=SCRATCH, scratch=True)
    postgres = "runuser -u postgres --"
    server.shell(name=f"Scrub the copy, dump it to {DUMP} and drop the copy", commands=[
        f"{postgres} install -d -m 700 {DUMP_DIR}",  # as postgres: root never follows a link postgres could plant
        f"{{ {postgres} {layout.program('staging-scrub')} --port {k.restore_port} --database {k.portal_database} "
        # --create: the database's own grants and settings (ALTER DATABASE ... SET search_path) come along.
        f"&& {postgres} {scratch.bin('pg_dump')} -p {k.restore_port} -d {k.portal_database} --format=custom --create "
        f"--exclude-schema=heartbeat -f {DUMP}.part && {postgres} mv {DUMP}.part {DUMP}; }}; rc=$?; "
        f"pg_dropcluster --stop {scratch.major} {scratch.name}; exit $rc",
    ])


@deploy("The old cluster cleared")
def old_cluster_cleared():
    """On every database host: Patroni stopped, the cluster's state gone from etcd and its data directory removed;
    the new cluster's generation recorded, so that deploy.py archives into a prefix no cluster owns."""
    k, pg = knobs(), cluster()
    systemd.service(name=f"Stop {pg.patroni_unit} (and the PostgreSQL it runs)", service=pg.patroni_unit, running=False)
    barrier(name="Every member is stopped")
    if host == database_hosts()[0]:
        server.shell(name=f"Forget the cluster {k.patroni_scope} in etcd", commands=[
            f"{etcd_client(etcd_members())} del --prefix {ETCD_NAMESPACE}{k.patroni_scope}/"])
    barrier(name="etcd holds no cluster")
    server.shell(name=f"Remove the old cluster's data ({pg.data_directory})", commands=[f"rm -rf {pg.data_directory}"])
    ship.file(f"The new cluster's archive generation ({GENERATION_NOW})", GENERATION_NOW + "\n", GENERATION, "644")


@deploy("The scrubbed copy")
def scrubbed_copy_loaded():
    """On the leader, when a rebuild's scrubbed copy waits: the new cluster's empty portal database made again from
    it (with the source's database grants and settings), analyzed (statistics of the scrubbed values only) and
    checkpointed before the first backup; the copy then removed. True when it is loaded (it brings its data key)."""
    k, pg = knobs(), cluster()
    if not host.get_fact(File, path=DUMP):
        return False
    if members():
        raise DeployError(f"{host.name}: a rebuild's scrubbed copy waits in {DUMP}, but the cluster it was meant for "
                          "was not cleared; rerun `make staging-rebuild`, or remove the file")
    postgres = "runuser -u postgres --"
    server.shell(name=f"Load the scrubbed copy ({DUMP}), analyze, checkpoint, remove the copy", commands=[
        # The database databases() made moments ago in this new cluster: empty, and no one's yet.
        f"{postgres} {pg.bin('dropdb')} -p {k.postgres_port} --force {k.portal_database}",
        f"{postgres} {pg.bin('pg_restore')} -p {k.postgres_port} -d postgres --create --exit-on-error {DUMP}",
        f"{postgres} psql -p {k.postgres_port} -d {k.portal_database} -XqAt -v ON_ERROR_STOP=1 -c 'analyze' "
        "-c 'checkpoint'",
        f"rm -f {DUMP}",
    ])
    return True
