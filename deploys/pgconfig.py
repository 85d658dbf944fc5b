"""postgresql.conf as data: memory sizing from a per-host budget, the tier's settings, and validation of every
parameter against PostgreSQL 17's own catalogue (pg17_parameters.json, read from pg_settings).

Pure functions: no host, no pyinfra. The deploy renders what `settings()` returns.
"""

import functools
import ipaddress
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from hostside.layout import HOT_STANDBY_SENSITIVE

CATALOGUE_FILE = Path(__file__).with_name("pg17_parameters.json")
MEMORY_UNITS_KB = {"B": 1 / 1024, "kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}
TIME_UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
BOOL_WORDS = {"on": "on", "off": "off", "true": "on", "false": "off", "yes": "on", "no": "off", "1": "on", "0": "off"}
QUANTITY = re.compile(r"^ *(-?[0-9]+(?:\.[0-9]+)?) *([a-zA-Z]*) *$")
# Parameters the deploy owns: set from other knobs or fixed by the tier's design, not overridable.
OWNED = {"data_directory", "hba_file", "ident_file", "external_pid_file", "port", "cluster_name",
         "unix_socket_directories", "include_dir", "config_file"}
# The tier's settings; postgres_settings adds to or overrides them (validated either way, tests/unit).
TIER_SETTINGS = {
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
    # Recent WAL kept without a slot: a member rejoining after a failover finds it before its slot is back on the
    # new leader (Patroni's default too; it ignores 0).
    "wal_keep_size": "128MB",
    # Incremental base backups (backup_full_every_days) read the WAL summaries since their parent began.
    "summarize_wal": "on",
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
}


class ConfigError(ValueError):
    """One line naming the parameter or knob; the caller adds the host and where it was set."""


@functools.cache
def _catalogue():
    return {name.lower(): meta for name, meta in json.loads(CATALOGUE_FILE.read_text()).items()}


def catalogue():
    """{name: pg_settings row}, names lower-cased: PostgreSQL's parameter names are case-insensitive."""
    return dict(_catalogue())


def memory_sizing(budget_mb, max_connections):
    """Memory settings (in MB) from the host's memory budget: never from /proc/meminfo, which in a container
    shows the whole machine.

    shared_buffers 25% of the budget, effective_cache_size 75%, maintenance_work_mem 1/16 (at most 2 GB), and
    work_mem what is left after those, shared by every connection running two sort/hash nodes at once.
    """
    if budget_mb < 256:
        raise ConfigError(f"postgres_memory_budget_mb: {budget_mb} MB is below the 256 MB this sizing supports")
    shared_buffers = budget_mb // 4
    maintenance = min(budget_mb // 16, 2048)
    work_mem = max(1, (budget_mb - shared_buffers - maintenance) // (2 * max_connections))
    return {
        "shared_buffers": f"{shared_buffers}MB",
        "effective_cache_size": f"{budget_mb * 3 // 4}MB",
        "maintenance_work_mem": f"{maintenance}MB",
        "work_mem": f"{work_mem}MB",
    }


def normalize(name, value, meta):
    """`value` as pg_settings.setting would show it (numbers in the parameter's own unit), validated."""
    text = str(value).strip() if not isinstance(value, bool) else ("on" if value else "off")
    vartype = meta["vartype"]
    if vartype == "bool":
        if text.lower() not in BOOL_WORDS:
            raise ConfigError(f"{name} = {value!r} is not a boolean (on/off)")
        return BOOL_WORDS[text.lower()]
    if vartype == "enum":  # PostgreSQL matches enum values case-insensitively
        if text.lower() not in [v.lower() for v in meta["enumvals"]]:
            raise ConfigError(f"{name} = {value!r} is not one of {', '.join(meta['enumvals'])}")
        return text.lower()
    if vartype == "string":
        return text
    number = _in_parameter_unit(name, text, meta)
    if vartype == "integer":
        number = int(math.floor(number + 0.5)) if number >= 0 else int(math.ceil(number - 0.5))
    low, high = float(meta["min_val"]), float(meta["max_val"])
    if not low <= number <= high:
        unit = f" {meta['unit']}" if meta["unit"] else ""
        raise ConfigError(f"{name} = {value!r} is out of range ({meta['min_val']}..{meta['max_val']}{unit})")
    return str(number) if vartype == "integer" else repr(float(number))


def _in_parameter_unit(name, text, meta):
    match = QUANTITY.match(text)
    if not match:
        raise ConfigError(f"{name} = {text!r} is not a number")
    number, suffix = float(match.group(1)), match.group(2)
    unit = meta["unit"] or ""
    if not suffix:
        return number
    for table in (MEMORY_UNITS_KB, TIME_UNITS_MS):
        base = _unit_in(table, unit)
        if base is not None:
            if suffix not in table:
                raise ConfigError(f"{name} = {text!r}: unit {suffix!r} is not one of {', '.join(table)}")
            return number * table[suffix] / base
    raise ConfigError(f"{name} = {text!r} takes no unit")


def _unit_in(table, unit):
    """Size of the parameter's unit (e.g. '8kB') in the table's base, or None if it is not that kind."""
    match = re.match(r"^(\d*)([a-zA-Z]+)$", unit)
    if not match or match.group(2) not in table:
        return None
    return int(match.group(1) or 1) * table[match.group(2)]


def validate(values, known=None):
    """Check a mapping of parameters; returns {name: normalized}. ConfigError names the parameter."""
    known = known or _catalogue()
    normalized = {}
    for name, value in values.items():
        if "." in name:  # an extension's parameter (e.g. pg_stat_statements.max): PostgreSQL takes any such name
            normalized[name] = str(value)
            continue
        if name in OWNED:
            raise ConfigError(f"{name} is set by the deploy itself; remove it")
        if name.lower() not in known:
            close = [k for k in known if k.startswith(name.lower().split("_")[0])][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{name} is not a PostgreSQL 17 parameter{hint}")
        normalized[name] = normalize(name, value, known[name.lower()])
    return normalized


def settings(memory_budget_mb, max_connections, overrides, extra=None):
    """Every parameter the deploy writes into postgresql.conf for one host, as {name: value}: the tier's own, the
    memory sizing, the knobs' `overrides` (postgres_settings) and `extra` (what other components add, such as
    archive_command or a replica's primary_conninfo), each validated against the catalogue."""
    values = dict(TIER_SETTINGS, max_connections=max_connections, **memory_sizing(memory_budget_mb, max_connections))
    values.update(overrides)
    values.update(extra or {})
    validate(values)
    return values


def changes(desired, live, known=None, elsewhere=()):
    """{name: context} of the parameters whose live value differs from the desired one, and of those the
    configuration file set before but no longer sets (they go back to their defaults). `elsewhere`: parameters
    another program sets (Patroni): not compared."""
    known = known or catalogue()
    live = {name.lower(): value for name, value in live.items() if name.lower() not in elsewhere}
    desired = {name: value for name, value in desired.items() if name.lower() not in elsewhere}
    wanted = {name.lower() for name in desired} | OWNED
    changed = {name: value["context"] for name, value in live.items()
               if value.get("source") == "configuration file" and name not in wanted}
    for name, value in desired.items():
        meta = known.get(name.lower()) or {"vartype": "string", "context": "sighup"}  # an extension's parameter
        want = normalize(name, value, meta)
        have = live.get(name.lower())
        if have is None or want != normalize(name, have["setting"], meta):
            changed[name] = meta["context"]
    return changed


def hba_rules(database_addresses, pooler_addresses, replication_user, extra):
    """pg_hba.conf's network lines: TLS only (hostssl), scram-sha-256 or client certificates, never trust.

    Every database host may replicate from this one and read, in database postgres, the files pg_rewind compares
    (any of them may be primary after a switchover, and the old primary rejoins with pg_rewind); PgBouncer hosts
    reach every database; `extra` (postgres_hba_extra: rules whose every field the knobs' schema checked) adds
    rules such as an admin network.
    """
    # Patroni's replication connections to its own server (it reads the local timeline) come over the socket.
    rules = [("local", "replication", replication_user, "", "scram-sha-256")]
    rules += [("hostssl", database, replication_user, _host_cidr(a), "scram-sha-256")
              for a in database_addresses for database in ("replication", "postgres")]
    rules += [("hostssl", "all", "all", _host_cidr(a), "scram-sha-256") for a in pooler_addresses]
    rules += [("hostssl", rule.database, rule.user, rule.address, rule.method) for rule in extra]
    return rules


def _host_cidr(address):
    try:
        return f"{ipaddress.ip_address(address)}/{32 if ipaddress.ip_address(address).version == 4 else 128}"
    except ValueError:
        raise ConfigError(f"host address {address!r} is not an IP address; set ssh_hostname to the host's address") from None


def connection_budget(desired, pooled, direct, standbys, backup_streams, known=None):
    """Refuse settings the tier's connections do not fit into; ConfigError names the knob to change.

    Client backends: every PgBouncer's capped server connections to this host (`pooled`, {pooler: n}), the
    connections made around the pooler (`direct`, {purpose: n}: monitoring, jobs, migrations), and the slots
    PostgreSQL keeps for superusers and pg_use_reserved_connections must fit max_connections.
    WAL senders (not counted in max_connections): one per other database host (any of them may stream from
    this one after a failover) and two per concurrent `pg_basebackup -X stream`, within max_wal_senders; each
    of those also holds a slot (the replica's, or the backup's temporary one) within max_replication_slots.
    """
    known = known or _catalogue()

    def value(name):
        return int(normalize(name, desired.get(name, known[name]["boot_val"]), known[name]))

    parts = {f"PgBouncer {name}": n for name, n in pooled.items()}
    parts.update({f"{label} (direct)": n for label, n in direct.items()})
    parts.update({name: value(name) for name in ("superuser_reserved_connections", "reserved_connections")})
    needed, limit = sum(parts.values()), value("max_connections")
    if needed > limit:
        shown = " + ".join(f"{label} {n}" for label, n in parts.items())
        raise ConfigError(f"postgres_max_connections: max_connections {limit} is below the connection budget {needed} ({shown}); "
                          "raise postgres_max_connections or lower pgbouncer_pool.max_db_connections")
    senders, slots = standbys + 2 * backup_streams, standbys + backup_streams
    for name, need in (("max_wal_senders", senders), ("max_replication_slots", slots)):
        if need > value(name):
            raise ConfigError(f"postgres_settings: {name} {value(name)} is below the {need} that {standbys} standby(s) and "
                              f"{backup_streams} concurrent pg_basebackup stream(s) (postgres_basebackup_streams) "
                              f"need; raise {name} in postgres_settings")


@dataclass(frozen=True)
class RestartPlan:
    """What a host's cluster does about a configuration change, decided from its live pg_settings.

    `changed`: {parameter: context} that differ; `restart_for`: parameters that need a restart (postmaster
    context, or pending_restart already); `decreased`: {hot-standby-sensitive parameter: its new value} lowered;
    `turn`: when this host restarts - "primary first" (a decreased hot-standby setting: replicas must never have
    less than the primary), "replica" (one at a time), "primary last", or None: `reload` says whether a reload
    carries the change, and nothing happens when both are empty.
    """

    changed: dict
    restart_for: list
    decreased: dict
    turn: str | None
    reload: bool


def restart_plan(desired, live, primary, down, reload_reasons=(), known=None, elsewhere=()):
    """The RestartPlan for one host. `live`: its pg_settings ({} when the cluster is not running); `down`: the
    cluster is stopped (a stopped cluster reads the files when it starts);
    `reload_reasons`: files other than postgresql.conf that changed and need a reload (pg_hba.conf, a certificate);
    `elsewhere`: parameters another program sets (not compared; a restart they wait for still counts)."""
    known = known or _catalogue()
    if down:
        return RestartPlan({}, [], {}, None, False)
    changed = changes(desired, live, known, elsewhere)
    pending = sorted(name for name, value in live.items() if value["pending_restart"])
    restart_for = sorted(name for name, context in changed.items() if context == "postmaster") + pending
    # What each hot-standby-sensitive parameter becomes: the desired value, or its default when unset.
    target = {n: normalize(n, desired[n], known[n]) if n in desired else live[n]["boot_val"]
              for n in HOT_STANDBY_SENSITIVE if n in changed and n in live}
    decreased = {n: value for n, value in target.items() if float(value) < float(live[n]["setting"])}
    if not restart_for:
        return RestartPlan(changed, [], decreased, None, bool(changed) or bool(reload_reasons))
    turn = ("primary first" if decreased else "primary last") if primary else "replica"
    return RestartPlan(changed, restart_for, decreased, turn, False)
