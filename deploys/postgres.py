"""PostgreSQL on every database host: Debian's packages, held against unattended upgrades, and clusters
with data checksums. A cluster that holds data is never dropped or re-initialised."""

from shlex import quote

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd

from deploys import pgconfig
from deploys.datasource import address_of, refused
from deploys.facts import AptHolds, AptVersions, FreeBytes, PostgresClusters, PostgresSettings
from deploys.knobs import knobs
from deploys.ordering import barrier
from hostside import layout

# A replica waits this long for the primary's lowered values to reach it before it restarts with them.
REPLAY_WAIT_S = 120
# A fresh cluster holds template0, template1 and postgres.
EMPTY_CLUSTER_DATABASES = 3


def cluster():
    """This host's PostgreSQL cluster (hostside/layout.py derives its paths and unit)."""
    return layout.Cluster(knobs().postgres_major, knobs().postgres_cluster)


def _packages(major):
    """The PostgreSQL packages the deploy installs and holds."""
    return [f"postgresql-{major}", f"postgresql-client-{major}", "postgresql-common", "postgresql-client-common"]


@deploy("PostgreSQL server")
def server_packages():
    k = knobs()
    packages = _packages(k.postgres_major)
    apt.packages(name="Install postgresql-common", packages=["postgresql-common"], update=True, cache_time=3600)
    _apt_repository(k)
    # Debian's package creates its first cluster during install: make that cluster with checksums.
    files.line(
        name="New clusters get data checksums",
        path="/etc/postgresql-common/createcluster.conf",
        line=r"^#?\s*initdb_options\s*=.*$",
        replace="initdb_options = '--data-checksums'",
    )
    apt.packages(name=f"Install PostgreSQL {k.postgres_major}", packages=packages[:2])
    unit_override = files.template(
        name="Bound how long PostgreSQL may take to start",
        src="templates/postgresql-unit-override.conf.j2",
        dest="/etc/systemd/system/postgresql@.service.d/mcp-portal.conf",
        create_remote_dir=True, mode="644", start_timeout_s=k.postgres_start_timeout_s,
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
    _checksums(cluster())


def _apt_repository(k):
    if k.postgres_apt_repository == "pgdg":
        codename = host.get_fact(LinuxDistribution)["release_meta"]["VERSION_CODENAME"]
        sources = files.template(name="PGDG apt repository", src="templates/pgdg.sources.j2",
                                 dest="/etc/apt/sources.list.d/pgdg.sources", mode="644",
                                 uri=k.postgres_pgdg_uri, suite=f"{codename}-pgdg")
        if sources.will_change:
            apt.update(name="Refresh the package index (PGDG added)")
    else:
        files.file(name="No PGDG apt repository", path="/etc/apt/sources.list.d/pgdg.sources", present=False)


def _checksums(pg):
    """Turn checksums on, offline, for an empty cluster that lacks them; refuse for one with data."""
    found = host.get_fact(PostgresClusters).get(pg.label)
    if not found or found["checksums"]:
        return
    if found["databases"] > EMPTY_CLUSTER_DATABASES:
        raise DeployError(
            f"{host.name}: cluster {pg.label} holds data and has no data checksums; the deploy will not rewrite it. "
            f"Plan downtime and run `pg_checksums --enable` on it stopped (docs/postgres.md)"
        )
    server.shell(
        name=f"Enable data checksums on the empty cluster {pg.label} (offline, seconds)",
        commands=[
            f"systemctl stop {pg.unit}",
            f"runuser -u postgres -- {pg.bin('pg_checksums')} --enable --pgdata {quote(found['datadir'])}",
            f"systemctl start {pg.unit}",
        ],
    )


@deploy("PostgreSQL configuration")
def configuration(reload_when=None, extra_settings=None, pooled=None):
    """Render postgresql.conf and pg_hba.conf; reload, or restart only for postmaster-level changes, decided
    from pg_settings at plan time (pgconfig.restart_plan). `reload_when`: {label: operation} (e.g. a renewed
    certificate) needing a reload; `extra_settings`: parameters another component adds (a replica's standby
    settings), validated with the rest; `pooled`: {PgBouncer host: server connections it may open}, counted in the
    connection budget."""
    k, pg = knobs(), cluster()
    address = k.postgres_listen_address or address_of(host)
    database_hosts = inventory.get_group("primary", []) + inventory.get_group("replicas", [])
    try:
        desired = pgconfig.settings(k.postgres_memory_budget_mb, k.postgres_max_connections, k.postgres_settings, {
            "listen_addresses": f"localhost,{address}", "ssl_cert_file": f"{layout.TLS_DIR}/server.crt",
            "ssl_key_file": f"{layout.TLS_DIR}/server.key", "ssl_ca_file": f"{layout.TLS_DIR}/ca.crt",
            **(extra_settings or {})})
        rules = pgconfig.hba_rules([address_of(h) for h in database_hosts],
                                   [address_of(h) for h in inventory.get_group("pgbouncer", [])],
                                   k.postgres_replication_user, k.postgres_hba_extra)
        pgconfig.connection_budget(desired, pooled or {}, k.postgres_direct_connections, len(database_hosts) - 1,
                                   k.postgres_basebackup_streams)
    except pgconfig.ConfigError as exc:
        raise refused(exc) from None
    _check_wal_headroom(desired, pg.wal_directory)
    files.template(
        name="Render postgresql.conf",
        src="templates/postgresql.conf.j2",
        dest=f"{pg.config_directory}/postgresql.conf",
        user="postgres", group="postgres", mode="644",
        settings=desired, cluster=pg, port=k.postgres_port, budget_mb=k.postgres_memory_budget_mb,
    )
    hba = files.template(
        name="Render pg_hba.conf",
        src="templates/pg_hba.conf.j2",
        dest=f"{pg.config_directory}/pg_hba.conf",
        user="postgres", group="postgres", mode="640",
        rules=rules,
    )
    triggers = {"pg_hba.conf": hba, **(reload_when or {})}
    plan = pgconfig.restart_plan(
        desired, host.get_fact(PostgresSettings, major=pg.major, cluster=pg.name), "primary" in host.groups,
        down=host.get_fact(PostgresClusters).get(pg.label, {}).get("status") == "down",
        reload_reasons=[label for label, op in triggers.items() if op.will_change])
    # Restarts go in turns: the primary first when a hot-standby-sensitive value went down, then the
    # replicas one at a time, then the primary. Every database host passes each barrier, so a turn
    # starts only when the one before it has finished on every host.
    if plan.turn == "primary first":
        _restart(pg, f"primary first, {', '.join(plan.decreased)} decreased", plan.restart_for)
    barrier(name="Restart turn: replicas")
    if plan.turn == "replica":
        # A standby refuses to start with a value below the one it last replayed from the primary: wait
        # until the primary's lowered values have reached it.
        wait = [_replayed(pg, name, value) for name, value in plan.decreased.items()]
        _restart(pg, "replica", plan.restart_for, before=wait, _serial=True)
    barrier(name="Restart turn: primary")
    if plan.turn == "primary last":
        _restart(pg, "primary, after the replicas", plan.restart_for)
    if plan.reload:
        reasons = sorted(plan.changed) + [label for label, op in triggers.items() if op.will_change]
        systemd.service(name=f"Reload PostgreSQL ({', '.join(reasons)} changed)", service=pg.unit, reloaded=True)


def _check_wal_headroom(desired, wal_dir):
    """Refuse settings that let replication slots fill the WAL volume: a dead replica or a long archive outage
    may retain up to max_slot_wal_keep_size of WAL, and the volume must hold that plus headroom."""
    headroom_mb = knobs().postgres_wal_headroom_mb
    limit_mb = int(pgconfig.normalize("max_slot_wal_keep_size", desired["max_slot_wal_keep_size"],
                                      pgconfig.catalogue()["max_slot_wal_keep_size"]))
    needed_mb = (limit_mb if limit_mb >= 0 else float("inf")) + headroom_mb
    free_mb = host.get_fact(FreeBytes, path=wal_dir) // (1024 * 1024)
    if free_mb < needed_mb:
        shown = "unlimited (-1)" if limit_mb < 0 else f"{limit_mb} MB"
        raise DeployError(
            f"{host.name}: the WAL volume ({wal_dir}) has {free_mb} MB free, less than max_slot_wal_keep_size "
            f"{shown} + postgres_wal_headroom_mb {headroom_mb} MB; lower "
            f"max_slot_wal_keep_size (postgres_settings) or grow the volume"
        )


def _restart(pg, turn, parameters, before=(), **global_arguments):
    shown = ", ".join(parameters[:4]) + (f" and {len(parameters) - 4} more" if len(parameters) > 4 else "")
    server.shell(name=f"Restart PostgreSQL ({turn}; {shown} need a restart)",
                 commands=[*before, f"systemctl restart {pg.unit}"], **global_arguments)


def _replayed(pg, name, wanted):
    """A command that waits until pg_controldata shows the primary's new `name`, or fails saying so."""
    pattern = quote(f"^{layout.HOT_STANDBY_SENSITIVE[name]}: +{int(wanted)}$")
    return _wait_for(f"{pg.bin('pg_controldata')} {pg.data_directory} | grep -Eq {pattern}",
                     f"the primary lowered {name} to {int(wanted)} but this replica has not replayed it (is it streaming?)")


@deploy("PostgreSQL minor update")
def minor_update():
    """The held PostgreSQL packages updated to the candidate in each host's package index, replicas one at a time,
    then the primary; each host restarts on the new binaries and must be ready (a replica: streaming again)
    before the next one starts. Hosts already on their candidate change nothing."""
    pg = cluster()
    versions = host.get_fact(AptVersions, packages=_packages(pg.major))
    outdated = {p: v for p, v in versions.items() if v.get("installed") not in (None, "(none)", v.get("candidate"))}
    primary = "primary" in host.groups
    barrier(name="Update turn: replicas")
    if outdated and not primary:
        _update(pg, outdated, replica=True, _serial=True)
    barrier(name="Update turn: primary")
    if outdated and primary:
        _update(pg, outdated, replica=False)


def _update(pg, outdated, replica, **global_arguments):
    names = " ".join(quote(p) for p in outdated)
    shown = ", ".join(f"{p} {v['installed']} -> {v['candidate']}" for p, v in outdated.items())
    ready = [_wait_for(f"pg_isready --cluster {pg.label} -q", "PostgreSQL is not accepting connections")]
    if replica:
        ready.append(_wait_for(f"runuser -u postgres -- psql --cluster {pg.label} -XtAc "
                               "'select status from pg_stat_wal_receiver' | grep -qx streaming",
                               "the replica is not streaming from the primary"))
    server.shell(
        name=f"Update {shown}; restart",
        commands=[
            # Held again whatever apt does: no later unattended upgrade restarts the cluster.
            f"apt-mark unhold {names} && {{ DEBIAN_FRONTEND=noninteractive apt-get install -y --only-upgrade "
            f"-o Dpkg::Options::=--force-confold {names}; rc=$?; apt-mark hold {names}; exit $rc; }}",
            f"systemctl restart {pg.unit}",
            *ready,
        ],
        **global_arguments,
    )


def _wait_for(check, failure, seconds=REPLAY_WAIT_S):
    """A command that waits until `check` succeeds, or fails saying `failure`."""
    return (f"for i in $(seq {seconds}); do {check} && break; sleep 1; done; {check} || "
            f"{{ echo {quote(f'{failure} after {seconds}s')} >&2; exit 1; }}")
