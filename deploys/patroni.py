"""Patroni on every database host (Debian's package, Debian's cluster layout): it runs PostgreSQL, holds the leader
lock in etcd, fails over, rewinds a replaced leader and keeps the members' replication slots.

The deploy renders what Patroni starts PostgreSQL with: the validated settings (pgconfig) as the file Patroni's
postgresql.conf includes, pg_hba.conf and Patroni's configuration; it keeps the cluster's dynamic configuration in
etcd as the knobs say (the parameters Patroni takes from there only, the timings, synchronous mode); and it carries
out reloads and restarts through Patroni's REST API (mcp-cluster), in the order the restart plan decides at plan
time from each member's live pg_settings. Who leads is read from Patroni at plan time; a first deploy bootstraps
the cluster on the first database host listed.
"""

import json
from shlex import quote

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import files, server, systemd

from deploys import pgconfig, secrets, ship
from deploys.datasource import address_of, refused
from deploys.etcd import client_endpoints
from deploys.facts import (DeviceExists, FreeBytes, PatroniConfig, PatroniMembers, PostgresClusters, PostgresNode,
                           PostgresSettings)
from deploys.knobs import knobs
from deploys.ordering import barrier
from deploys.packages import install
from deploys.postgres import EMPTY_CLUSTER_DATABASES, cluster, wait_for
from deploys.replication import lag_threshold_mb, purpose_of, slot_name, standby_settings, synchronous_problem, tags
from hostside import layout
from hostside.cluster import config_patch

# What Patroni takes from etcd only (its CMDLINE_OPTIONS; listen_addresses, port and cluster_name it sets itself):
# the deploy writes the validated values there, so Patroni's own defaults never silently win.
DYNAMIC_PARAMETERS = ("max_connections", "max_wal_senders", "max_replication_slots", "max_worker_processes",
                      "max_locks_per_transaction", "max_prepared_transactions", "wal_level", "wal_log_hints",
                      "hot_standby", "track_commit_timestamp", "wal_keep_size")
# What Patroni sets itself, from its configuration (the address, the port), as a member's role needs (recovery) or
# as synchronous_replication asks (the synchronous standbys):
# not in the deploy's settings file, and not compared with the live values by the restart plan.
PATRONI_PARAMETERS = ("listen_addresses", "port", "cluster_name", "hba_file", "ident_file", "config_file",
                      "data_directory", "primary_conninfo", "primary_slot_name", "restore_command",
                      "archive_cleanup_command", "recovery_end_command", "recovery_min_apply_delay",
                      "recovery_target", "recovery_target_action", "recovery_target_inclusive", "recovery_target_lsn",
                      "recovery_target_name", "recovery_target_time", "recovery_target_timeline", "recovery_target_xid",
                      "synchronous_standby_names")
RESTAPI_USER = "patroni"
PATRONI_DROP_IN = ("# Rendered by deploy.py (deploys/patroni.py): a Patroni that died is started again, at once.\n"
                   "[Service]\nRestart=on-failure\nRestartSec=1s\n")
CUSTOM_CONF = "mcp-portal.conf"
# How long a replica waits for the leader's lowered values to reach it before it restarts with them.
REPLAY_WAIT_S = 120


# Where Patroni keeps its clusters' state in etcd (its `namespace`): /mcp-portal/<scope>/.
ETCD_NAMESPACE = "/mcp-portal/"


def database_hosts():
    return inventory.get_group("database", [])


def members():
    """{member name: Patroni's view of it} from the first database host whose Patroni answers; {} before the
    cluster exists."""
    for each in database_hosts():
        found = each.get_fact(PatroniMembers)
        if found.get("members"):
            return {m["name"]: m for m in found["members"]}
    return {}


def leader():
    """The database host that leads (Patroni's leader), or the one that bootstraps a cluster not made yet: the first
    listed. DeployError when the cluster exists and has no leader (an election is under way)."""
    found = members()
    if not found:
        return database_hosts()[0].name
    leaders = [name for name, m in found.items() if m["role"] in ("leader", "standby_leader")]
    if not leaders:
        raise DeployError("the Patroni cluster has no leader now (an election or a failover is under way); "
                          "deploy again when `mcp-ha status` shows one")
    return leaders[0]


def dynamic_configuration(desired):
    """The cluster's dynamic configuration, as etcd should hold it, from the knobs and the desired settings."""
    k, known = knobs(), pgconfig.catalogue()
    return {
        "ttl": k.patroni_ttl, "loop_wait": k.patroni_loop_wait, "retry_timeout": k.patroni_retry_timeout,
        "maximum_lag_on_failover": k.patroni_maximum_lag_on_failover_mb * 2**20,
        "primary_start_timeout": k.patroni_primary_start_timeout, "failsafe_mode": True, "check_timeline": True,
        # Strict: with no replica to acknowledge, a commit waits rather than being acknowledged by the leader alone.
        "synchronous_mode": "quorum" if k.synchronous_replication else False, "synchronous_node_count": 1,
        "synchronous_mode_strict": k.synchronous_replication,
        "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": {
            name: str(desired.get(name, known[name]["boot_val"])) for name in DYNAMIC_PARAMETERS}},
    }


def _watchdog_ready(k):
    if k.patroni_watchdog == "required" and not host.get_fact(DeviceExists, path="/dev/watchdog"):
        raise DeployError(f"{host.name}: patroni_watchdog is required but /dev/watchdog is missing: load a watchdog "
                          "driver (modprobe softdog, or the platform's) or set patroni_watchdog (docs/failover.md)")


@deploy("Patroni")
def patroni(archive, reload_when=None, pooled=None):
    """Everything on one database host. `archive`: the WAL archive's settings (its restore_command goes to Patroni,
    which writes the recovery settings); `reload_when`: operations whose change needs a reload (a renewed
    certificate); `pooled`: {PgBouncer host: server connections it may open}, for the connection budget."""
    k, pg = knobs(), cluster()
    _watchdog_ready(k)
    problem = synchronous_problem([h.name for h in database_hosts()], k)
    if problem:
        raise refused(problem)
    theirs = sorted(set(k.postgres_settings) & set(PATRONI_PARAMETERS))
    if theirs:
        raise refused(f"postgres_settings: {', '.join(theirs)}: set by Patroni (the address and port from "
                      "postgres_listen_address and postgres_port, recovery as each member's role needs, synchronous "
                      "standbys from synchronous_replication); remove it")
    address = k.postgres_listen_address or address_of(host)
    restore_command = archive["restore_command"]
    try:
        desired = pgconfig.settings(k.postgres_memory_budget_mb, k.postgres_max_connections, k.postgres_settings, {
            "ssl_cert_file": f"{layout.TLS_DIR}/server.crt", "ssl_key_file": f"{layout.TLS_DIR}/server.key",
            "ssl_ca_file": f"{layout.TLS_DIR}/ca.crt", **standby_settings(host.name),
            # Where Debian's clusters log (Patroni would send the log to its own journal otherwise).
            "logging_collector": "on", "log_directory": "/var/log/postgresql",
            "log_filename": pg.log_file.rsplit("/", 1)[1],
            **{n: v for n, v in archive.items() if n != "restore_command"}})
        rules = pgconfig.hba_rules([address_of(h) for h in database_hosts()],
                                   [address_of(h) for h in inventory.get_group("pgbouncer", [])],
                                   k.postgres_replication_user, k.postgres_hba_extra)
        pgconfig.connection_budget(desired, pooled or {}, k.postgres_direct_connections, len(database_hosts()) - 1,
                                   k.postgres_basebackup_streams)
    except pgconfig.ConfigError as exc:
        raise refused(exc) from None
    _check_wal_headroom(desired, pg.wal_directory)
    dcs = dynamic_configuration(desired)
    found, lead = members(), leader()
    _refuse_a_foreign_cluster(pg, lead)

    install("Install Patroni (and python3-etcd, its etcd client)", packages=["patroni", "python3-etcd"])
    # PostgreSQL runs under Patroni only: Debian's own unit for the cluster must never start it too (masked).
    masked = files.link(name=f"{pg.unit} never starts the cluster (Patroni does)",
                        path=f"/etc/systemd/system/{pg.unit}.service", target="/dev/null")
    # Debian's unit does not restart a Patroni that died (Restart=no), and stops only Patroni's process (KillMode=
    # process): PostgreSQL would run on as a primary that nothing demotes once another member takes the lock.
    restarts = ship.file(f"{pg.patroni_unit} is restarted when it dies", PATRONI_DROP_IN,
                         f"/etc/systemd/system/{pg.patroni_unit}.service.d/mcp-portal.conf", "644",
                         create_remote_dir=True)
    if masked.will_change or restarts.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    files.directory(name="The cluster's configuration directory", path=pg.config_directory, user="postgres",
                    group="postgres", mode="755")
    # Written as the directory's owner.
    postgres_owned = {"user": "postgres", "group": "postgres", "as_user": "postgres"}
    start = ship.file("pg_lsclusters knows the cluster; only Patroni starts it", "manual\n",
                      f"{pg.config_directory}/start.conf", "644", **postgres_owned)
    ship.file("pg_ident.conf (no mappings)", "# Rendered by deploy.py: no ident mappings.\n",
              f"{pg.config_directory}/pg_ident.conf", "640", **postgres_owned)
    local = {n: v for n, v in desired.items() if n not in DYNAMIC_PARAMETERS + PATRONI_PARAMETERS}
    conf = ship.template("Render the settings Patroni's postgresql.conf includes", "templates/postgresql.conf.j2",
                         f"{pg.config_directory}/{CUSTOM_CONF}", "644", **postgres_owned, settings=local, cluster=pg,
                         budget_mb=k.postgres_memory_budget_mb)
    def render_hba(name, rewrite=False):
        return ship.template(name, "templates/pg_hba.conf.j2", f"{pg.config_directory}/pg_hba.conf", "640",
                             **postgres_owned, rewrite=rewrite, rules=rules)

    hba = render_hba("Render pg_hba.conf")
    files.directory(name="Patroni's configuration directory", path="/etc/patroni", user="root", group="postgres", mode="750")
    config = secrets.put_private("Patroni's configuration (REST API and replication passwords)", ship.render(
        "templates/patroni.yml.j2", namespace=ETCD_NAMESPACE, scope=k.patroni_scope, name=host.name, address=address,
        cluster=pg, restapi_port=k.patroni_restapi_port, tls=layout.TLS_DIR, restapi_user=RESTAPI_USER,
        restapi_password=secrets.password(f"{RESTAPI_USER}_restapi"), etcd_hosts=client_endpoints(), dcs=dcs,
        port=k.postgres_port, custom_conf=f"{pg.config_directory}/{CUSTOM_CONF}",
        replication_user=k.postgres_replication_user,
        replication_password=secrets.password(k.postgres_replication_user), restore_command=restore_command,
        watchdog=k.patroni_watchdog, tags=tags(host.name),
        restore_standby=f"{layout.program('base-backup')} restore --standby"), pg.patroni_config, user="postgres",
        group="postgres")
    ship.file("Record this member's purpose, lag threshold and slot (read by tests/infra and SREs)",
              json.dumps({"purpose": purpose_of(host.name), "lag_threshold_mb": lag_threshold_mb(host.name),
                          "slot": slot_name(host.name)}, sort_keys=True) + "\n",
              layout.config("member.json"), "644")
    # Enabled only: started below, in an order (all members started at once would race for the bootstrap).
    systemd.service(name=f"{pg.patroni_unit} starts at boot", service=pg.patroni_unit, enabled=True, running=None)

    cluster_cmd = layout.program("cluster")
    if not found:
        # A new cluster: the first database host bootstraps it, then the others clone from it.
        if host.name == lead:
            _start(pg, "bootstraps the cluster", f"{cluster_cmd} wait-leader --timeout 300")
            # Patroni's bootstrap appends its (empty) list of rules to pg_hba.conf: the same rules, written again.
            render_hba("pg_hba.conf as rendered (Patroni's bootstrap appended to it)", rewrite=True)
        barrier(name="The leader bootstrapped the cluster")
        if host.name != lead:
            _start(pg, "clones from the leader", f"{cluster_cmd} wait-running --timeout 600")
        return
    # A new or rebuilt member (etcd may still list a rebuilt one until its key expires), or one whose Patroni was
    # stopped: started, it clones or rejoins.
    if not host.get_fact(SystemdStatus, services=[pg.patroni_unit]).get(f"{pg.patroni_unit}.service"):
        _start(pg, f"joins the cluster led by {lead}", f"{cluster_cmd} wait-running --timeout 600")
        return

    live = host.get_fact(PostgresSettings, major=pg.major, cluster=pg.name)
    if host.name == lead and dcs_differs(host.get_fact(PatroniConfig), dcs):
        server.shell(name="Set the cluster's dynamic configuration in etcd (mcp-cluster configure)",
                     commands=[f"{cluster_cmd} configure"], _stdin=json.dumps(dcs, sort_keys=True))
    triggers = {"settings": conf, "pg_hba.conf": hba, "Patroni's configuration": config, "start.conf": start,
                **(reload_when or {})}
    plan = pgconfig.restart_plan(desired, live, host.name == lead, down=not live, elsewhere=PATRONI_PARAMETERS,
                                 reload_reasons=[label for label, op in triggers.items() if op.will_change])
    if plan.reload or plan.turn:
        files_changed = [label for label, op in triggers.items() if op.will_change and label != "settings"]
        reasons = sorted(plan.changed) + files_changed or ["settings"]
        server.shell(name=f"Patroni reloads ({', '.join(reasons)} changed)", commands=[f"{cluster_cmd} reload"])
    # Restarts go in turns: the leader first when a hot-standby-sensitive value went down, then the replicas one
    # at a time, then the leader. Every database host passes each barrier, so a turn starts only when the one
    # before it has finished on every host.
    wait = k.patroni_loop_wait + k.patroni_retry_timeout + 30
    if plan.turn == "primary first":
        _restart(f"leader first, {', '.join(plan.decreased)} decreased", plan.restart_for, wait)
    barrier(name="Restart turn: replicas")
    if plan.turn == "replica":
        # A replica restarted before it replayed the leader's lowered value would start with the old one (Patroni
        # takes the higher of etcd's and pg_controldata's) and need a second restart: wait for the replay.
        replayed = [_replayed(pg, name, value) for name, value in plan.decreased.items()]
        _restart("replica", plan.restart_for, wait, before=replayed, _serial=True)
    barrier(name="Restart turn: leader")
    if plan.turn == "primary last":
        _restart("leader, after the replicas", plan.restart_for, wait)


def dcs_differs(live, wanted):
    """True when etcd's dynamic configuration lacks what the deploy wants (or cannot be read)."""
    return live is None or bool(config_patch(live, wanted))


def _refuse_a_foreign_cluster(pg, lead):
    """A cluster on this host of another system than the leader's (made before Patroni, or by Debian's package):
    refused when it holds data, removed when it is empty (Patroni then clones this host from the leader)."""
    existing = host.get_fact(PostgresClusters).get(pg.label)
    if not existing:
        return
    if members():
        ours = next(h for h in database_hosts() if h.name == lead).get_fact(PostgresClusters).get(pg.label, {})
        if ours.get("system_identifier") == existing["system_identifier"]:
            return  # Patroni's: it rejoins (with pg_rewind when it diverged)
    running = host.get_fact(PostgresNode, major=pg.major, cluster=pg.name)  # {} when it is not running
    if existing["databases"] > EMPTY_CLUSTER_DATABASES or running.get("holds_data"):
        raise DeployError(f"{host.name}: cluster {pg.label} holds data and is not of the Patroni cluster "
                          f"{knobs().patroni_scope} (system {existing['system_identifier']}); the deploy will not "
                          "replace it: move it away first (docs/failover.md)")
    # Its configuration directory stays: the deploy renders it, and Patroni writes postgresql.conf there.
    server.shell(name=f"Remove the empty cluster {pg.label} Patroni did not make (this host clones the leader instead)",
                 # Through its unit first (stopped outside, its ExecStop fails and leaves the unit failed),
                 # then whatever runs outside systemd.
                 commands=[f"systemctl stop {pg.unit} || true",
                           f"pg_ctlcluster --skip-systemctl-redirect {pg.major} {pg.name} stop -m fast || true",
                           f"systemctl reset-failed {pg.unit} || true", f"rm -rf {pg.data_directory}"])


def _start(pg, what, ready, **global_arguments):
    server.shell(name=f"Start Patroni ({what})", commands=[f"systemctl start {pg.patroni_unit}", ready],
                 **global_arguments)


def _restart(turn, parameters, wait_s, before=(), **global_arguments):
    shown = ", ".join(parameters[:4]) + (f" and {len(parameters) - 4} more" if len(parameters) > 4 else "")
    server.shell(name=f"Restart PostgreSQL through Patroni ({turn}; {shown} need a restart)",
                 commands=[*before, f"{layout.program('cluster')} restart --wait-pending {wait_s}"], **global_arguments)


def _replayed(pg, name, wanted):
    """A command that waits until pg_controldata shows the leader's new `name`, or fails saying so."""
    pattern = quote(f"^{layout.HOT_STANDBY_SENSITIVE[name]}: +{int(wanted)}$")
    return wait_for(f"{pg.bin('pg_controldata')} {pg.data_directory} | grep -Eq {pattern}",
                    f"the leader lowered {name} to {int(wanted)} but this replica has not replayed it (is it streaming?)",
                    REPLAY_WAIT_S)


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
            f"{shown} + postgres_wal_headroom_mb {headroom_mb} MB; lower max_slot_wal_keep_size (postgres_settings) "
            "or grow the volume"
        )
