"""Streaming replicas: one physical slot each on the primary, cloned with pg_basebackup over verified TLS,
settings from each replica's purpose. Before changing anything the deploy checks that the inventory's primary
is the live one; it never clones over a cluster that holds data.
"""

import io
import json
from shlex import quote

from pyinfra import host, inventory, state
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server

from deploys import secrets, sqlscript
from deploys.datasource import address_of, source_of
from deploys.facts import HOLDS_DATA_SQL, PostgresClusters, PostgresNode, PostgresSlots, UngrantedFunctions
from deploys.knobs import knobs
from deploys.postgres import cluster
from deploys.sqlscript import identifier, literal
from hostside import layout
from hostside.fence import MARKER as FENCE_MARKER

# Per purpose: the standby settings it implies, and the lag an SRE is alerted at (the assessment's section 8).
PURPOSES = {
    # Long queries must finish: queries may delay replay, and they do not hold back the primary's vacuum.
    "reporting": {"settings": {"hot_standby_feedback": "off", "max_standby_streaming_delay": "15min"}, "lag_threshold_mb": 100},
    # Fresh reads: replay is delayed at most 30 s, and feedback avoids query cancellations.
    "realtime": {"settings": {"hot_standby_feedback": "on", "max_standby_streaming_delay": "30s"}, "lag_threshold_mb": 10},
}
SLOT_PREFIX = "replica_"
PASSFILE = "/var/lib/postgresql/.pgpass-replication"
# What pg_rewind reads on its source (PostgreSQL's list for a role that is not a superuser).
REWIND_FUNCTIONS = ("pg_catalog.pg_ls_dir(text,boolean,boolean)", "pg_catalog.pg_stat_file(text,boolean)",
                    "pg_catalog.pg_read_binary_file(text)", "pg_catalog.pg_read_binary_file(text,bigint,bigint,boolean)")


def slot_name(replica_name):
    return SLOT_PREFIX + replica_name.replace("-", "_").replace(".", "_")


def purpose_of(name, k=None):
    """Replica `name`'s purpose, from the knobs `k` (default: the planned host's)."""
    return (k or knobs()).replica_purposes.get(name, "realtime")


def lag_threshold_mb(name, k=None):
    """How far (MB of WAL) replica `name` may replay behind the primary: replica_lag_threshold_mb, else its purpose's."""
    k = k or knobs()
    return k.replica_lag_threshold_mb.get(name, PURPOSES[purpose_of(name, k)]["lag_threshold_mb"])


def synchronous_settings():
    """synchronous_standby_names for every database host (a standby ignores it until promoted): a quorum of one
    over the sync-eligible replicas' application names, or empty when synchronous_replication is off."""
    k = knobs()
    if not k.synchronous_replication:
        return {"synchronous_standby_names": ""}
    eligible = [slot_name(r.name) for r in inventory.get_group("replicas", [])
                if k.replica_sync_eligible.get(r.name, True)]
    if len(eligible) < 2:
        raise DeployError(f"{host.name}: {source_of('synchronous_replication')}: synchronous_replication needs two "
                          f"sync-eligible replicas (has {len(eligible)}): with one, losing it stops every commit; "
                          "add a replica or leave it off (replica_sync_eligible)")
    return {"synchronous_standby_names": f"ANY 1 ({', '.join(eligible)})"}


def primary_conninfo():
    """How a database host reaches the primary as the replication role, over verified TLS."""
    k = knobs()
    return (f"host={address_of(the_primary())} port={k.postgres_port} user={k.postgres_replication_user} "
            f"passfile={PASSFILE} sslmode=verify-full sslrootcert={layout.TLS_DIR}/ca.crt")


def standby_settings():
    """The postgresql.conf lines a replica adds: how it follows the primary, and its purpose's settings."""
    return {"primary_conninfo": f"{primary_conninfo()} application_name={slot_name(host.name)}",
            "primary_slot_name": slot_name(host.name), **PURPOSES[purpose_of(host.name)]["settings"]}


def the_primary():
    return inventory.get_group("primary")[0]  # baseline() refused any inventory without exactly one


def check_reality():
    """Refuse, naming both hosts, when the live cluster disagrees with the inventory: the inventory's primary
    is in recovery, or a replica is a primary of its own that holds data or runs on a newer timeline."""
    primary = the_primary()
    pg = cluster()
    primary_state = primary.get_fact(PostgresNode, major=pg.major, cluster=pg.name)
    if primary_state.get("in_recovery"):
        raise DeployError(f"the inventory names {primary.name} the primary, but it is in recovery (a standby); "
                          f"find the live primary and fix the inventory (docs/replication.md)")
    # A replica outside --limit is not looked at: a failover re-points the survivors while the lost primary is away.
    replicas = [r for r in inventory.get_group("replicas", []) if state.is_host_in_limit(r)]
    for replica in replicas:
        node = replica.get_fact(PostgresNode, major=pg.major, cluster=pg.name)
        if not node or not primary_state:
            continue
        ours = node["system_identifier"] == primary_state["system_identifier"]
        if not node["in_recovery"] and node["holds_data"]:
            raise DeployError(f"{replica.name} is a primary that holds data, not a standby of {primary.name} as the "
                              f"inventory says; fix the inventory or rebuild {replica.name} (docs/replication.md)")
        if ours and node["timeline"] > primary_state["timeline"]:
            raise DeployError(f"{replica.name} is on timeline {node['timeline']}, newer than {primary.name}'s "
                              f"{primary_state['timeline']}: {replica.name} was promoted; fix the inventory (docs/replication.md)")


@deploy("Replication slots")
def slots():
    """On the primary: a physical slot per replica of the inventory; slots of replicas that left it dropped; the
    replication role may read what pg_rewind compares, so a replaced primary can rejoin."""
    check_reality()
    pg, user = cluster(), knobs().postgres_replication_user
    ungranted = host.get_fact(UngrantedFunctions, major=pg.major, cluster=pg.name, role=user, functions=REWIND_FUNCTIONS)
    if ungranted is None:  # a cluster not running at plan time (a first deploy): grant, the role exists by then
        ungranted = list(REWIND_FUNCTIONS)
    if ungranted:
        sqlscript.run(f"Let {user} read what pg_rewind compares ({len(ungranted)} functions)",
                      f"grant execute on function {', '.join(ungranted)} to {identifier(user)};")
    live = host.get_fact(PostgresSlots, major=pg.major, cluster=pg.name)
    wanted = {slot_name(r.name) for r in inventory.get_group("replicas", [])}
    for name in sorted(wanted - set(live)):
        sqlscript.run(f"Create replication slot {name}", f"select pg_create_physical_replication_slot({literal(name)}, true);")
    for name in sorted(n for n in set(live) - wanted if n.startswith(SLOT_PREFIX)):
        if live[name]["active"]:
            raise DeployError(f"{host.name}: slot {name} is in use but its replica left the inventory; stop that "
                              f"replica first, then deploy again")
        sqlscript.run(f"Drop replication slot {name} (its replica left the inventory)",
                      f"select pg_drop_replication_slot({literal(name)});")


@deploy("Streaming replica")
def standby():
    """On a replica: the replication password file, then, unless it already follows the primary, a clone."""
    check_reality()
    primary, pg, k = the_primary(), cluster(), knobs()
    user = k.postgres_replication_user
    # Any host and database: the same file serves whichever host is primary, and pg_rewind. Written as postgres,
    # whose directory it is.
    secrets.put_private("Replication password file", f"*:{k.postgres_port}:*:{user}:{secrets.password(user)}\n",
                        PASSFILE, user="postgres", group="postgres", as_user="postgres")
    purpose = purpose_of(host.name)
    threshold = lag_threshold_mb(host.name)
    files.put(
        name="Record this replica's purpose and lag threshold (read by tests/infra and monitoring)",
        src=io.StringIO(json.dumps({"purpose": purpose, "lag_threshold_mb": threshold, "slot": slot_name(host.name),
                                    "primary": primary.name}, sort_keys=True) + "\n"),
        dest=layout.config("replica.json"), mode="644",
    )
    state = host.get_fact(PostgresNode, major=pg.major, cluster=pg.name)
    primary_state = primary.get_fact(PostgresNode, major=pg.major, cluster=pg.name)
    ours = primary_state.get("system_identifier")
    if state.get("in_recovery") and state.get("system_identifier") == ours:
        return
    datadir, unit = pg.data_directory, pg.unit
    conninfo = primary_conninfo()
    stopped = host.get_fact(PostgresClusters).get(pg.label, {})
    if not state and stopped.get("status") == "down" and ours and stopped.get("system_identifier") == ours:
        _rejoin(primary, pg, conninfo)
        return
    cloning = f"{datadir}.cloning"
    server.shell(
        name=f"Clone from {primary.name} (pg_basebackup over TLS, slot {slot_name(host.name)})",
        commands=[
            # Checked again on the host at run time: only a running cluster that holds nothing is replaced.
            f"holds=$(runuser -u postgres -- psql --cluster {pg.label} -XtAc {quote(HOLDS_DATA_SQL)}) "
            f"|| {{ echo 'cannot tell whether {datadir} holds data (is the cluster running?): not replaced' >&2; exit 1; }}; "
            f"[ \"$holds\" = f ] || {{ echo '{datadir} holds data: not replaced' >&2; exit 1; }}",
            f"systemctl stop {unit}",
            f"rm -rf {cloning} && install -d -o postgres -g postgres -m 700 {cloning}",
            # A failed copy leaves the old (empty) cluster running, so the next deploy can check and try again.
            f"runuser -u postgres -- pg_basebackup --pgdata={cloning} --dbname={quote(conninfo)} --wal-method=stream "
            f"--slot={slot_name(host.name)} --checkpoint=fast --no-password || {{ rm -rf {cloning}; systemctl start {unit}; exit 1; }}",
            f"touch {cloning}/standby.signal && chown postgres:postgres {cloning}/standby.signal",
            f"rm -rf {datadir} && mv {cloning} {datadir}",
            f"systemctl start {unit}",
        ],
    )



def _rejoin(primary, pg, conninfo):
    """A stopped cluster of the primary's own system (a replaced or switched-over primary) rewinds to the primary's
    timeline and starts as its standby: no copy of the whole cluster."""
    server.shell(
        name=f"Rejoin as a standby of {primary.name} (pg_rewind, then streaming from slot {slot_name(host.name)})",
        commands=[
            # Completes crash recovery first if it stopped uncleanly; fetches missing WAL with restore_command.
            f"runuser -u postgres -- {pg.bin('pg_rewind')} --target-pgdata={pg.data_directory} "
            f"--source-server={quote(conninfo + ' dbname=postgres')} --restore-target-wal "
            f"--config-file={pg.config_directory}/postgresql.conf",
            f"runuser -u postgres -- touch {pg.data_directory}/standby.signal",
            f"rm -f {FENCE_MARKER} {layout.METRICS_DIR}/fence.prom",  # a standby now: the fence has done its work
            f"systemctl start {pg.unit}",
        ],
    )
