"""Streaming replicas: one physical slot each on the primary, cloned with pg_basebackup over verified TLS,
settings from each replica's purpose. Before changing anything the deploy checks that the inventory's primary
is the live one; it never clones over a cluster that holds data.
"""

import io
import json

from pyinfra import host, inventory, state
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server

from deploys import secrets
from deploys.datasource import address_of, source_of
from deploys.facts import HOLDS_DATA_SQL, PostgresClusters, PostgresNode, PostgresSlots, UngrantedFunctions
from deploys.postgres import DEFAULTS as POSTGRES_DEFAULTS
from deploys.sqlscript import psql
from deploys.tls import DEFAULTS as TLS_DEFAULTS
from hostside.fence import MARKER as FENCE_MARKER
from hostside.textfile import DIRECTORY as METRICS

# Per purpose: the standby settings it implies, and the lag an SRE is alerted at (the assessment's section 8).
PURPOSES = {
    # Long queries must finish: queries may delay replay, and they do not hold back the primary's vacuum.
    "reporting": {"settings": {"hot_standby_feedback": "off", "max_standby_streaming_delay": "15min"}, "lag_threshold_mb": 100},
    # Fresh reads: replay is delayed at most 30 s, and feedback avoids query cancellations.
    "realtime": {"settings": {"hot_standby_feedback": "on", "max_standby_streaming_delay": "30s"}, "lag_threshold_mb": 10},
}
DEFAULTS = {
    **secrets.DEFAULTS,
    "postgres_major": POSTGRES_DEFAULTS["postgres_major"],
    "postgres_cluster": POSTGRES_DEFAULTS["postgres_cluster"],
    "postgres_port": POSTGRES_DEFAULTS["postgres_port"],
    "postgres_replication_user": POSTGRES_DEFAULTS["postgres_replication_user"],
    "tls_remote_dir": TLS_DEFAULTS["tls_remote_dir"],
    # {replica host name: purpose}; a replica not named here is "realtime".
    "replica_purposes": {},
    "replica_lag_threshold_mb": {},  # {replica host name: MB}, overriding its purpose's threshold
    # Synchronous replication: a commit returns once ANY 1 of the sync-eligible replicas has flushed it, so an
    # acknowledged transaction survives the primary's loss; off by default (a commit then waits a round trip).
    "synchronous_replication": False,
    "replica_sync_eligible": {},  # {replica host name: false} leaves a replica out; every replica is eligible by default
}
SLOT_PREFIX = "replica_"
PASSFILE = "/var/lib/postgresql/.pgpass-replication"
# What pg_rewind reads on its source (PostgreSQL's list for a role that is not a superuser).
REWIND_FUNCTIONS = ("pg_catalog.pg_ls_dir(text,boolean,boolean)", "pg_catalog.pg_stat_file(text,boolean)",
                    "pg_catalog.pg_read_binary_file(text)", "pg_catalog.pg_read_binary_file(text,bigint,bigint,boolean)")


def slot_name(replica_name):
    return SLOT_PREFIX + replica_name.replace("-", "_").replace(".", "_")


def _data(key):
    """Host data with this module's default: standby_settings() also runs outside this module's deploys."""
    return host.data.get(key, DEFAULTS[key])


def purpose_of(name, data=None):
    purpose = (host.data if data is None else data).get("replica_purposes", DEFAULTS["replica_purposes"]).get(name, "realtime")
    if purpose not in PURPOSES:
        raise DeployError(f"{name}: replica_purposes says {purpose!r}; purposes are {', '.join(PURPOSES)}")
    return purpose


def lag_threshold_mb(name, data=None):
    """How far (MB of WAL) replica `name` may replay behind the primary: replica_lag_threshold_mb, else its purpose's.
    `data`: a host's data outside a deploy (mcp-ha)."""
    data = host.data if data is None else data
    overrides = data.get("replica_lag_threshold_mb", DEFAULTS["replica_lag_threshold_mb"])
    return overrides.get(name, PURPOSES[purpose_of(name, data)]["lag_threshold_mb"])


def synchronous_settings():
    """synchronous_standby_names for every database host (a standby ignores it until promoted): a quorum of one
    over the sync-eligible replicas' application names, or empty when synchronous_replication is off."""
    enabled = _data("synchronous_replication")
    if not isinstance(enabled, bool):
        raise DeployError(f"{host.name}: {source_of('synchronous_replication')}: synchronous_replication = {enabled!r}; "
                          "use true or false")
    if not enabled:
        return {"synchronous_standby_names": ""}
    eligible = [slot_name(r.name) for r in inventory.get_group("replicas", [])
                if _data("replica_sync_eligible").get(r.name, True)]
    if len(eligible) < 2:
        raise DeployError(f"{host.name}: {source_of('synchronous_replication')}: synchronous_replication needs two "
                          f"sync-eligible replicas (has {len(eligible)}): with one, losing it stops every commit; "
                          "add a replica or leave it off (replica_sync_eligible)")
    return {"synchronous_standby_names": f"ANY 1 ({', '.join(eligible)})"}


def primary_conninfo():
    """How a database host reaches the primary as the replication role, over verified TLS."""
    return (f"host={address_of(the_primary())} port={_data('postgres_port')} user={_data('postgres_replication_user')} "
            f"passfile={PASSFILE} sslmode=verify-full sslrootcert={_data('tls_remote_dir')}/ca.crt")


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
    major, cluster = _data("postgres_major"), _data("postgres_cluster")  # also called outside this module's deploys
    primary_state = primary.get_fact(PostgresNode, major=major, cluster=cluster)
    if primary_state.get("in_recovery"):
        raise DeployError(f"the inventory names {primary.name} the primary, but it is in recovery (a standby); "
                          f"find the live primary and fix the inventory (docs/replication.md)")
    # A replica outside --limit is not looked at: a failover re-points the survivors while the lost primary is away.
    replicas = [r for r in inventory.get_group("replicas", []) if state.is_host_in_limit(r)]
    for replica in replicas:
        node = replica.get_fact(PostgresNode, major=major, cluster=cluster)
        if not node or not primary_state:
            continue
        ours = node["system_identifier"] == primary_state["system_identifier"]
        if not node["in_recovery"] and node["holds_data"]:
            raise DeployError(f"{replica.name} is a primary that holds data, not a standby of {primary.name} as the "
                              f"inventory says; fix the inventory or rebuild {replica.name} (docs/replication.md)")
        if ours and node["timeline"] > primary_state["timeline"]:
            raise DeployError(f"{replica.name} is on timeline {node['timeline']}, newer than {primary.name}'s "
                              f"{primary_state['timeline']}: {replica.name} was promoted; fix the inventory (docs/replication.md)")


@deploy("Replication slots", data_defaults=DEFAULTS)
def slots():
    """On the primary: a physical slot per replica of the inventory; slots of replicas that left it dropped; the
    replication role may read what pg_rewind compares, so a replaced primary can rejoin."""
    check_reality()
    major, cluster = host.data.postgres_major, host.data.postgres_cluster
    user = host.data.postgres_replication_user
    ungranted = host.get_fact(UngrantedFunctions, major=major, cluster=cluster, role=user, functions=REWIND_FUNCTIONS)
    if ungranted is None:  # a cluster not running at plan time (a first deploy): grant, the role exists by then
        ungranted = list(REWIND_FUNCTIONS)
    if ungranted:
        server.shell(name=f"Let {user} read what pg_rewind compares ({len(ungranted)} functions)", commands=[
            f"{psql()} -c \"grant execute on function {', '.join(ungranted)} to {user}\""])
    live = host.get_fact(PostgresSlots, major=major, cluster=cluster)
    wanted = {slot_name(r.name) for r in inventory.get_group("replicas", [])}
    for name in sorted(wanted - set(live)):
        server.shell(name=f"Create replication slot {name}",
                     commands=[f"{psql()} -c \"select pg_create_physical_replication_slot('{name}', true)\""])
    for name in sorted(n for n in set(live) - wanted if n.startswith(SLOT_PREFIX)):
        if live[name]["active"]:
            raise DeployError(f"{host.name}: slot {name} is in use but its replica left the inventory; stop that "
                              f"replica first, then deploy again")
        server.shell(name=f"Drop replication slot {name} (its replica left the inventory)",
                     commands=[f"{psql()} -c \"select pg_drop_replication_slot('{name}')\""])


@deploy("Streaming replica", data_defaults=DEFAULTS)
def standby():
    """On a replica: the replication password file, then, unless it already follows the primary, a clone."""
    check_reality()
    primary = the_primary()
    major, cluster = host.data.postgres_major, host.data.postgres_cluster
    user = host.data.postgres_replication_user
    files.put(  # any host and database: the same file serves whichever host is primary, and pg_rewind
        name="Replication password file",
        src=io.StringIO(f"*:{host.data.postgres_port}:*:{user}:{secrets.password(user)}\n"),
        dest=PASSFILE, user="postgres", group="postgres", mode="600",
    )
    purpose = purpose_of(host.name)
    threshold = lag_threshold_mb(host.name)
    files.put(
        name="Record this replica's purpose and lag threshold (read by tests/infra and monitoring)",
        src=io.StringIO(json.dumps({"purpose": purpose, "lag_threshold_mb": threshold, "slot": slot_name(host.name),
                                    "primary": primary.name}, sort_keys=True) + "\n"),
        dest="/etc/mcp-portal/replica.json", mode="644",
    )
    state = host.get_fact(PostgresNode, major=major, cluster=cluster)
    primary_state = primary.get_fact(PostgresNode, major=major, cluster=cluster)
    ours = primary_state.get("system_identifier")
    if state.get("in_recovery") and state.get("system_identifier") == ours:
        return
    datadir = f"/var/lib/postgresql/{major}/{cluster}"
    unit = f"postgresql@{major}-{cluster}"
    conninfo = primary_conninfo()
    stopped = host.get_fact(PostgresClusters).get(f"{major}/{cluster}", {})
    if not state and stopped.get("status") == "down" and ours and stopped.get("system_identifier") == ours:
        _rejoin(primary, major, cluster, datadir, unit, conninfo)
        return
    cloning = f"{datadir}.cloning"
    server.shell(
        name=f"Clone from {primary.name} (pg_basebackup over TLS, slot {slot_name(host.name)})",
        commands=[
            # Checked again on the host at run time: only a running cluster that holds nothing is replaced.
            f"holds=$(runuser -u postgres -- psql --cluster {major}/{cluster} -XtAc \"{HOLDS_DATA_SQL}\") "
            f"|| {{ echo 'cannot tell whether {datadir} holds data (is the cluster running?): not replaced' >&2; exit 1; }}; "
            f"[ \"$holds\" = f ] || {{ echo '{datadir} holds data: not replaced' >&2; exit 1; }}",
            f"systemctl stop {unit}",
            f"rm -rf {cloning} && install -d -o postgres -g postgres -m 700 {cloning}",
            # A failed copy leaves the old (empty) cluster running, so the next deploy can check and try again.
            f"runuser -u postgres -- pg_basebackup --pgdata={cloning} --dbname='{conninfo}' --wal-method=stream "
            f"--slot={slot_name(host.name)} --checkpoint=fast --no-password || {{ rm -rf {cloning}; systemctl start {unit}; exit 1; }}",
            f"touch {cloning}/standby.signal && chown postgres:postgres {cloning}/standby.signal",
            f"rm -rf {datadir} && mv {cloning} {datadir}",
            f"systemctl start {unit}",
        ],
    )



def _rejoin(primary, major, cluster, datadir, unit, conninfo):
    """A stopped cluster of the primary's own system (a replaced or switched-over primary) rewinds to the primary's
    timeline and starts as its standby: no copy of the whole cluster."""
    bin_dir = f"/usr/lib/postgresql/{major}/bin"
    server.shell(
        name=f"Rejoin as a standby of {primary.name} (pg_rewind, then streaming from slot {slot_name(host.name)})",
        commands=[
            # Completes crash recovery first if it stopped uncleanly; fetches missing WAL with restore_command.
            f"runuser -u postgres -- {bin_dir}/pg_rewind --target-pgdata={datadir} "
            f"--source-server='{conninfo} dbname=postgres' --restore-target-wal "
            f"--config-file=/etc/postgresql/{major}/{cluster}/postgresql.conf",
            f"runuser -u postgres -- touch {datadir}/standby.signal",
            f"rm -f {FENCE_MARKER} {METRICS}/fence.prom",  # a standby now: the fence has done its work
            f"systemctl start {unit}",
        ],
    )
