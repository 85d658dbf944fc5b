"""PostgreSQL on every database host: Debian's packages, held against unattended upgrades, and clusters
with data checksums. A cluster that holds data is never dropped or re-initialised."""

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd

from deploys import pgconfig
from deploys.datasource import address_of, source_of
from deploys.facts import AptHolds, AptVersions, FreeBytes, PostgresClusters, PostgresSettings
from deploys.ordering import barrier
from deploys.tls import DEFAULTS as TLS_DEFAULTS

DEFAULTS = {
    "postgres_major": 17,
    # Where PostgreSQL comes from: "debian" (the release's archive) or "pgdg" (apt.postgresql.org, or the mirror
    # of it at postgres_pgdg_uri), for prod when minor releases must land before Debian's point release.
    "postgres_apt_repository": "debian",
    "postgres_pgdg_uri": "https://apt.postgresql.org/pub/repos/apt",
    "postgres_cluster": "main",
    "postgres_port": 5432,
    # Where PostgreSQL listens besides localhost; empty: the host's inventory address (ssh_hostname).
    "postgres_listen_address": "",
    "postgres_replication_user": "replicator",
    # More pg_hba rules, e.g. [{"database": "all", "user": "dba", "address": "10.20.0.0/24"}]; hostssl only.
    "postgres_hba_extra": [],
    # Per-host memory budget: containers and VMs can see more RAM than they may use.
    "postgres_memory_budget_mb": 1024,
    "postgres_max_connections": 100,
    # Connections made around PgBouncer, by purpose; with PgBouncer's capped pools and the superuser reserve
    # they must fit max_connections (checked before any change).
    "postgres_direct_connections": {"monitoring": 5, "jobs": 5, "operators": 5},
    # pg_basebackup -X stream runs that may overlap (a scheduled backup and a replica's clone): each takes two
    # WAL senders and a replication slot.
    "postgres_basebackup_streams": 2,
    # Free space the WAL volume must keep beyond what max_slot_wal_keep_size lets slots retain.
    "postgres_wal_headroom_mb": 2048,
    # How long a (re)start may take before systemd fails it; Debian's unit would wait forever.
    "postgres_start_timeout_s": 600,
    # The tier's settings; group_data's postgres_settings adds to or overrides them (validated either way).
    "postgres_base_settings": {
        "listen_addresses": "localhost",
        "password_encryption": "scram-sha-256",
        "ssl": "on",
        "ssl_min_protocol_version": "TLSv1.2",
        # Replication (the assessment's section 8), and pg_rewind after a failover.
        "wal_level": "replica",
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        "hot_standby": "on",
        "wal_log_hints": "on",
        # A dead slot or a long archive outage must not fill the WAL volume.
        "max_slot_wal_keep_size": "10GB",
        # Archiving is switched on by the WAL-archiving deploy; archive_timeout is the assessment's 5 min.
        "archive_mode": "off",
        "archive_timeout": "300s",
        # What an SRE reads during an incident.
        "log_connections": "on",
        "log_disconnections": "on",
        "log_lock_waits": "on",
        "log_checkpoints": "on",
        "log_min_duration_statement": "500ms",
        "log_autovacuum_min_duration": "10s",
        "log_temp_files": "0",
        "log_line_prefix": "%m [%p] %q%u@%d/%a ",
        "log_timezone": "Etc/UTC",
        # Guardrails: no session holds locks idle; the repo, not ALTER SYSTEM, is the configuration.
        "idle_in_transaction_session_timeout": "60s",
        "allow_alter_system": "off",
        "timezone": "Etc/UTC",
        "datestyle": "ISO, MDY",
        "lc_messages": "C.UTF-8",
        "lc_monetary": "C.UTF-8",
        "lc_numeric": "C.UTF-8",
        "lc_time": "C.UTF-8",
        "default_text_search_config": "pg_catalog.english",
        "dynamic_shared_memory_type": "posix",
    },
    "postgres_settings": {},
}
# Lowering one of these on the primary while a replica still has the higher value stops the replica:
# the primary restarts first in that case (replicas must have values >= the primary's).
# Each with its line in pg_controldata, where a standby records the primary's value when it replays it.
HOT_STANDBY_SENSITIVE = {
    "max_connections": "max_connections setting",
    "max_worker_processes": "max_worker_processes setting",
    "max_wal_senders": "max_wal_senders setting",
    "max_prepared_transactions": "max_prepared_xacts setting",
    "max_locks_per_transaction": "max_locks_per_xact setting",
}
# A replica waits this long for the primary's lowered values to reach it before it restarts with them.
REPLAY_WAIT_S = 120
APT_REPOSITORIES = ("debian", "pgdg")
# A fresh cluster holds template0, template1 and postgres.
EMPTY_CLUSTER_DATABASES = 3


def _packages(major):
    """The PostgreSQL packages the deploy installs and holds."""
    return [f"postgresql-{major}", f"postgresql-client-{major}", "postgresql-common", "postgresql-client-common"]


@deploy("PostgreSQL server", data_defaults=DEFAULTS)
def server_packages():
    major = host.data.postgres_major
    packages = _packages(major)
    apt.packages(name="Install postgresql-common", packages=["postgresql-common"], update=True, cache_time=3600)
    _apt_repository()
    # Debian's package creates its first cluster during install: make that cluster with checksums.
    files.line(
        name="New clusters get data checksums",
        path="/etc/postgresql-common/createcluster.conf",
        line=r"^#?\s*initdb_options\s*=.*$",
        replace="initdb_options = '--data-checksums'",
    )
    apt.packages(name=f"Install PostgreSQL {major}", packages=packages[:2])
    unit_override = files.template(
        name="Bound how long PostgreSQL may take to start",
        src="templates/postgresql-unit-override.conf.j2",
        dest="/etc/systemd/system/postgresql@.service.d/mcp-portal.conf",
        create_remote_dir=True, mode="644", start_timeout_s=host.data.postgres_start_timeout_s,
    )
    if unit_override.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    held = host.get_fact(AptHolds)
    unheld = [p for p in packages if p not in held]
    if unheld:
        server.shell(
            name="Hold the PostgreSQL packages (minor updates go through the rolling update, replicas first)",
            commands=[f"apt-mark hold {' '.join(unheld)}"],
        )
    _checksums(major)


def _apt_repository():
    repository = host.data.postgres_apt_repository
    if repository not in APT_REPOSITORIES:
        raise DeployError(f"{host.name}: {source_of('postgres_apt_repository')}: postgres_apt_repository = {repository!r}; "
                          f"use one of {', '.join(APT_REPOSITORIES)}")
    if repository == "pgdg":
        codename = host.get_fact(LinuxDistribution)["release_meta"]["VERSION_CODENAME"]
        sources = files.template(name="PGDG apt repository", src="templates/pgdg.sources.j2",
                                 dest="/etc/apt/sources.list.d/pgdg.sources", mode="644",
                                 uri=host.data.postgres_pgdg_uri, suite=f"{codename}-pgdg")
        if sources.will_change:
            apt.update(name="Refresh the package index (PGDG added)")
    else:
        files.file(name="No PGDG apt repository", path="/etc/apt/sources.list.d/pgdg.sources", present=False)


def _checksums(major):
    """Turn checksums on, offline, for an empty cluster that lacks them; refuse for one with data."""
    key = f"{major}/{host.data.postgres_cluster}"
    cluster = host.get_fact(PostgresClusters).get(key)
    if not cluster or cluster["checksums"]:
        return
    if cluster["databases"] > EMPTY_CLUSTER_DATABASES:
        raise DeployError(
            f"{host.name}: cluster {key} holds data and has no data checksums; the deploy will not rewrite it. "
            f"Plan downtime and run `pg_checksums --enable` on it stopped (docs/postgres.md)"
        )
    unit = f"postgresql@{major}-{host.data.postgres_cluster}"
    server.shell(
        name=f"Enable data checksums on the empty cluster {key} (offline, seconds)",
        commands=[
            f"systemctl stop {unit}",
            f"runuser -u postgres -- /usr/lib/postgresql/{major}/bin/pg_checksums --enable --pgdata {cluster['datadir']}",
            f"systemctl start {unit}",
        ],
    )


@deploy("PostgreSQL configuration", data_defaults={**DEFAULTS, **TLS_DEFAULTS})
def configuration(reload_when=None, extra_settings=None, pooled=None):
    """Render postgresql.conf and pg_hba.conf; reload, or restart only for postmaster-level changes, decided
    from pg_settings at plan time. `reload_when`: {label: operation} (e.g. a renewed certificate) needing a
    reload; `extra_settings`: parameters another component adds (a replica's standby settings); `pooled`:
    {PgBouncer host: server connections it may open}, counted in the connection budget."""
    major, cluster = host.data.postgres_major, host.data.postgres_cluster
    address = host.data.postgres_listen_address or address_of(host)
    tls = host.data.tls_remote_dir
    try:
        desired = pgconfig.settings(host.data, source_of)
        desired.update(listen_addresses=f"localhost,{address}", ssl_cert_file=f"{tls}/server.crt",
                       ssl_key_file=f"{tls}/server.key", ssl_ca_file=f"{tls}/ca.crt", **(extra_settings or {}))
        database_hosts = inventory.get_group("primary", []) + inventory.get_group("replicas", [])
        rules = pgconfig.hba_rules(
            [address_of(h) for h in database_hosts],
            [address_of(h) for h in inventory.get_group("pgbouncer", [])],
            host.data.postgres_replication_user, host.data.postgres_hba_extra, source_of("postgres_hba_extra"),
        )
        pgconfig.connection_budget(desired, pooled or {}, host.data.postgres_direct_connections,
                                   len(database_hosts) - 1, host.data.postgres_basebackup_streams, source_of)
    except pgconfig.ConfigError as exc:
        raise DeployError(f"{host.name}: {exc}") from None
    _check_wal_headroom(desired, f"/var/lib/postgresql/{major}/{cluster}/pg_wal")
    files.template(
        name="Render postgresql.conf",
        src="templates/postgresql.conf.j2",
        dest=f"/etc/postgresql/{major}/{cluster}/postgresql.conf",
        user="postgres", group="postgres", mode="644",
        settings=desired, major=major, cluster=cluster, port=host.data.postgres_port,
        budget_mb=host.data.postgres_memory_budget_mb,
    )
    hba = files.template(
        name="Render pg_hba.conf",
        src="templates/pg_hba.conf.j2",
        dest=f"/etc/postgresql/{major}/{cluster}/pg_hba.conf",
        user="postgres", group="postgres", mode="640",
        rules=rules,
    )
    live = host.get_fact(PostgresSettings, major=major, cluster=cluster)
    changed = pgconfig.changes(desired, live)
    pending = sorted(name for name, value in live.items() if value["pending_restart"])
    restart_for = sorted(name for name, context in changed.items() if context == "postmaster") + pending
    # A stopped cluster reads the files when it starts; a fenced or rejoining one must stay down.
    down = host.get_fact(PostgresClusters).get(f"{major}/{cluster}", {}).get("status") == "down"
    if down:
        changed, restart_for = {}, []
    unit = f"postgresql@{major}-{cluster}"
    primary = "primary" in host.groups
    known = pgconfig.catalogue()
    # What each hot-standby-sensitive parameter becomes: the desired value, or its default when unset.
    target = {n: pgconfig.normalize(n, desired[n], known[n], "desired") if n in desired else live[n]["boot_val"]
              for n in HOT_STANDBY_SENSITIVE if n in changed and n in live}
    decreased = [n for n, value in target.items() if float(value) < float(live[n]["setting"])]
    # Restarts go in turns: the primary first when a hot-standby-sensitive value went down, then the
    # replicas one at a time, then the primary. Every database host passes each barrier, so a turn
    # starts only when the one before it has finished on every host.
    if restart_for and primary and decreased:
        _restart(unit, f"primary first, {', '.join(decreased)} decreased", restart_for)
    barrier(name="Restart turn: replicas")
    if restart_for and not primary:
        # A standby refuses to start with a value below the one it last replayed from the primary: wait
        # until the primary's lowered values have reached it.
        wait = [_replayed(major, f"/var/lib/postgresql/{major}/{cluster}", n, target[n]) for n in decreased]
        _restart(unit, "replica", restart_for, before=wait, _serial=True)
    barrier(name="Restart turn: primary")
    if restart_for and primary and not decreased:
        _restart(unit, "primary, after the replicas", restart_for)
    if not restart_for and not down:
        triggers = {"pg_hba.conf": hba, **(reload_when or {})}
        reasons = sorted(changed) + [label for label, op in triggers.items() if op.will_change]
        if reasons:
            systemd.service(name=f"Reload PostgreSQL ({', '.join(reasons)} changed)", service=unit, reloaded=True)


def _check_wal_headroom(desired, wal_dir):
    """Refuse settings that let replication slots fill the WAL volume: a dead replica or a long archive outage
    may retain up to max_slot_wal_keep_size of WAL, and the volume must hold that plus headroom."""
    limit_mb = int(pgconfig.normalize("max_slot_wal_keep_size", desired["max_slot_wal_keep_size"],
                                      pgconfig.catalogue()["max_slot_wal_keep_size"], "desired"))
    needed_mb = (limit_mb if limit_mb >= 0 else float("inf")) + host.data.postgres_wal_headroom_mb
    free_mb = host.get_fact(FreeBytes, path=wal_dir) // (1024 * 1024)
    if free_mb < needed_mb:
        shown = "unlimited (-1)" if limit_mb < 0 else f"{limit_mb} MB"
        raise DeployError(
            f"{host.name}: the WAL volume ({wal_dir}) has {free_mb} MB free, less than max_slot_wal_keep_size "
            f"{shown} + postgres_wal_headroom_mb {host.data.postgres_wal_headroom_mb} MB; lower "
            f"max_slot_wal_keep_size (postgres_settings) or grow the volume"
        )


def _restart(unit, turn, parameters, before=(), **global_arguments):
    shown = ", ".join(parameters[:4]) + (f" and {len(parameters) - 4} more" if len(parameters) > 4 else "")
    server.shell(name=f"Restart PostgreSQL ({turn}; {shown} need a restart)",
                 commands=[*before, f"systemctl restart {unit}"], **global_arguments)


def _replayed(major, datadir, name, wanted):
    """A command that waits until pg_controldata shows the primary's new `name`, or fails saying so."""
    return _wait_for(f"/usr/lib/postgresql/{major}/bin/pg_controldata {datadir} | "
                     f"grep -Eq '^{HOT_STANDBY_SENSITIVE[name]}: +{wanted}$'",
                     f"the primary lowered {name} to {wanted} but this replica has not replayed it (is it streaming?)")


@deploy("PostgreSQL minor update", data_defaults=DEFAULTS)
def minor_update():
    """The held PostgreSQL packages updated to the candidate in each host's package index, replicas one at a time,
    then the primary; each host restarts on the new binaries and must be ready (a replica: streaming again)
    before the next one starts. Hosts already on their candidate change nothing."""
    major, cluster = host.data.postgres_major, host.data.postgres_cluster
    versions = host.get_fact(AptVersions, packages=_packages(major))
    outdated = {p: v for p, v in versions.items() if v.get("installed") not in (None, "(none)", v.get("candidate"))}
    primary = "primary" in host.groups
    barrier(name="Update turn: replicas")
    if outdated and not primary:
        _update(major, cluster, outdated, replica=True, _serial=True)
    barrier(name="Update turn: primary")
    if outdated and primary:
        _update(major, cluster, outdated, replica=False)


def _update(major, cluster, outdated, replica, **global_arguments):
    names = " ".join(outdated)
    shown = ", ".join(f"{p} {v['installed']} -> {v['candidate']}" for p, v in outdated.items())
    ready = [_wait_for(f"pg_isready --cluster {major}/{cluster} -q", "PostgreSQL is not accepting connections")]
    if replica:
        ready.append(_wait_for(f"runuser -u postgres -- psql --cluster {major}/{cluster} -XtAc "
                               "'select status from pg_stat_wal_receiver' | grep -qx streaming",
                               "the replica is not streaming from the primary"))
    server.shell(
        name=f"Update {shown}; restart",
        commands=[
            # Held again whatever apt does: no later unattended upgrade restarts the cluster.
            f"apt-mark unhold {names} && {{ DEBIAN_FRONTEND=noninteractive apt-get install -y --only-upgrade "
            f"-o Dpkg::Options::=--force-confold {names}; rc=$?; apt-mark hold {names}; exit $rc; }}",
            f"systemctl restart postgresql@{major}-{cluster}",
            *ready,
        ],
        **global_arguments,
    )


def _wait_for(check, failure, seconds=REPLAY_WAIT_S):
    """A command that waits until `check` succeeds, or fails saying `failure`."""
    return (f"for i in $(seq {seconds}); do {check} && break; sleep 1; done; {check} || "
            f"{{ echo '{failure} after {seconds}s' >&2; exit 1; }}")
