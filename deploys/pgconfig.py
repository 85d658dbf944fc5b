"""postgresql.conf as data: memory sizing from a per-host budget, the tier's settings, and validation of every
parameter against PostgreSQL 17's own catalogue (pg17_parameters.json, read from pg_settings).

Pure functions: no host, no pyinfra. The deploy renders what `settings()` returns.
"""

import ipaddress
import json
import math
import re
from pathlib import Path

CATALOGUE_FILE = Path(__file__).with_name("pg17_parameters.json")
MEMORY_UNITS_KB = {"B": 1 / 1024, "kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}
TIME_UNITS_MS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
BOOL_WORDS = {"on": "on", "off": "off", "true": "on", "false": "off", "yes": "on", "no": "off", "1": "on", "0": "off"}
QUANTITY = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
# Parameters the deploy owns: set from other knobs or fixed by the tier's design, not overridable.
OWNED = {"data_directory", "hba_file", "ident_file", "external_pid_file", "port", "cluster_name",
         "unix_socket_directories", "include_dir", "config_file"}


class ConfigError(ValueError):
    """One line naming the key and where it came from."""


def catalogue():
    """{name: pg_settings row}, names lower-cased: PostgreSQL's parameter names are case-insensitive."""
    return {name.lower(): meta for name, meta in json.loads(CATALOGUE_FILE.read_text()).items()}


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


def normalize(name, value, meta, source):
    """`value` as pg_settings.setting would show it (numbers in the parameter's own unit), validated."""
    text = str(value).strip() if not isinstance(value, bool) else ("on" if value else "off")
    vartype = meta["vartype"]
    if vartype == "bool":
        if text.lower() not in BOOL_WORDS:
            raise ConfigError(f"{source}: {name} = {value!r} is not a boolean (on/off)")
        return BOOL_WORDS[text.lower()]
    if vartype == "enum":  # PostgreSQL matches enum values case-insensitively
        if text.lower() not in [v.lower() for v in meta["enumvals"]]:
            raise ConfigError(f"{source}: {name} = {value!r} is not one of {', '.join(meta['enumvals'])}")
        return text.lower()
    if vartype == "string":
        return text
    number = _in_parameter_unit(name, text, meta, source)
    if vartype == "integer":
        number = int(math.floor(number + 0.5)) if number >= 0 else int(math.ceil(number - 0.5))
    low, high = float(meta["min_val"]), float(meta["max_val"])
    if not low <= number <= high:
        unit = f" {meta['unit']}" if meta["unit"] else ""
        raise ConfigError(f"{source}: {name} = {value!r} is out of range ({meta['min_val']}..{meta['max_val']}{unit})")
    return str(number) if vartype == "integer" else repr(float(number))


def _in_parameter_unit(name, text, meta, source):
    match = QUANTITY.match(text)
    if not match:
        raise ConfigError(f"{source}: {name} = {text!r} is not a number")
    number, suffix = float(match.group(1)), match.group(2)
    unit = meta["unit"] or ""
    if not suffix:
        return number
    for table in (MEMORY_UNITS_KB, TIME_UNITS_MS):
        base = _unit_in(table, unit)
        if base is not None:
            if suffix not in table:
                raise ConfigError(f"{source}: {name} = {text!r}: unit {suffix!r} is not one of {', '.join(table)}")
            return number * table[suffix] / base
    raise ConfigError(f"{source}: {name} = {text!r} takes no unit")


def _unit_in(table, unit):
    """Size of the parameter's unit (e.g. '8kB') in the table's base, or None if it is not that kind."""
    match = re.match(r"^(\d*)([a-zA-Z]+)$", unit)
    if not match or match.group(2) not in table:
        return None
    return int(match.group(1) or 1) * table[match.group(2)]


def validate(overrides, source, known=None, key="postgres_settings"):
    """Check a mapping of parameters set under data `key`; returns {name: normalized}. ConfigError names the key."""
    known = known or catalogue()
    if not isinstance(overrides, dict):
        raise ConfigError(f"{source}: {key} must be a mapping of parameter names to values")
    normalized = {}
    for name, value in overrides.items():
        if "." in name:  # an extension's parameter (e.g. pg_stat_statements.max): PostgreSQL takes any such name
            normalized[name] = str(value)
            continue
        if name in OWNED:
            raise ConfigError(f"{source}: {key}.{name} is set by the deploy itself; remove it")
        if name.lower() not in known:
            close = [k for k in known if k.startswith(name.lower().split("_")[0])][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{source}: {key}.{name} is not a PostgreSQL 17 parameter{hint}")
        normalized[name] = normalize(f"{key}.{name}", value, known[name.lower()], source)
    return normalized


def settings(data, source_of):
    """Every parameter the deploy writes into postgresql.conf for one host, as {name: value}, validated.

    `data` is the host's merged data (attribute access, like pyinfra's host.data) (defaults of deploys/postgres.py, then group_data); `source_of(key)`
    names where a key was set, for the error message.
    """
    known = catalogue()
    values = dict(data.postgres_base_settings)
    values["max_connections"] = data.postgres_max_connections
    try:
        values.update(memory_sizing(int(data.postgres_memory_budget_mb), int(data.postgres_max_connections)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source_of('postgres_memory_budget_mb')}: {exc}") from None
    validate(values, source_of("postgres_base_settings"), known, key="postgres_base_settings")
    overrides = data.get("postgres_settings") or {}
    validate(overrides, source_of("postgres_settings"), known)
    values.update(overrides)
    return values


def changes(desired, live, known=None):
    """{name: context} of the parameters whose live value differs from the desired one, and of those the
    configuration file set before but no longer sets (they go back to their defaults)."""
    known = known or catalogue()
    live = {name.lower(): value for name, value in live.items()}
    wanted = {name.lower() for name in desired} | OWNED
    changed = {name: value["context"] for name, value in live.items()
               if value.get("source") == "configuration file" and name not in wanted}
    for name, value in desired.items():
        meta = known.get(name.lower()) or {"vartype": "string", "context": "sighup"}  # an extension's parameter
        want = normalize(name, value, meta, "desired")
        have = live.get(name.lower())
        if have is None or want != normalize(name, have["setting"], meta, "live"):
            changed[name] = meta["context"]
    return changed


HBA_METHODS = ("scram-sha-256", "cert")
HBA_KEYS = {"database", "user", "address", "method"}


def hba_rules(database_addresses, pooler_addresses, replication_user, extra, source):
    """pg_hba.conf's network lines: TLS only (hostssl), scram-sha-256 or client certificates, never trust.

    Every database host may replicate from this one and read, in database postgres, the files pg_rewind compares
    (any of them may be primary after a switchover, and the old primary rejoins with pg_rewind); PgBouncer hosts
    reach every database; `extra` (group_data postgres_hba_extra) adds rules such as an admin network, validated here.
    """
    rules = [("hostssl", database, replication_user, _host_cidr(a, source), "scram-sha-256")
             for a in database_addresses for database in ("replication", "postgres")]
    rules += [("hostssl", "all", "all", _host_cidr(a, source), "scram-sha-256") for a in pooler_addresses]
    if not isinstance(extra, list):
        raise ConfigError(f"{source}: postgres_hba_extra must be a list of {{database, user, address, method}}")
    for index, rule in enumerate(extra):
        where = f"{source}: postgres_hba_extra[{index}]"
        if not isinstance(rule, dict) or not {"database", "user", "address"} <= rule.keys() <= HBA_KEYS:
            raise ConfigError(f"{where} needs database, user and address (and optionally method)")
        method = rule.get("method", "scram-sha-256")
        if method not in HBA_METHODS:
            raise ConfigError(f"{where}: method {method!r} is not allowed on the network; use {' or '.join(HBA_METHODS)}")
        try:
            address = str(ipaddress.ip_network(rule["address"], strict=True))
        except ValueError as exc:
            raise ConfigError(f"{where}: address {rule['address']!r} is not a network ({exc})") from None
        rules.append(("hostssl", str(rule["database"]), str(rule["user"]), address, method))
    return rules


def _host_cidr(address, source):
    try:
        return f"{ipaddress.ip_address(address)}/{32 if ipaddress.ip_address(address).version == 4 else 128}"
    except ValueError:
        raise ConfigError(f"{source}: host address {address!r} is not an IP address; set ssh_hostname to the host's address") from None


def connection_budget(desired, pooled, direct, standbys, backup_streams, source_of, known=None):
    """Refuse settings the tier's connections do not fit into.

    Client backends: every PgBouncer's capped server connections to this host (`pooled`, {pooler: n}), the
    connections made around the pooler (`direct`, {purpose: n}: monitoring, jobs, migrations), and the slots
    PostgreSQL keeps for superusers and pg_use_reserved_connections must fit max_connections.
    WAL senders (not counted in max_connections): one per other database host (any of them may stream from
    this one after a failover) and two per concurrent `pg_basebackup -X stream`, within max_wal_senders; each
    of those also holds a slot (the replica's, or the backup's temporary one) within max_replication_slots.
    """
    known = known or catalogue()

    def value(name):
        return int(normalize(name, desired.get(name, known[name]["boot_val"]), known[name], "desired"))

    source = source_of("postgres_direct_connections")
    if not isinstance(direct, dict):
        raise ConfigError(f"{source}: postgres_direct_connections must be a mapping of purpose to connections")
    for label, count in direct.items():
        if not isinstance(count, int) or count < 0:
            raise ConfigError(f"{source}: postgres_direct_connections.{label} = {count!r} must be a whole number >= 0")
    parts = {f"PgBouncer {name}": n for name, n in pooled.items()}
    parts.update({f"{label} (direct)": n for label, n in direct.items()})
    parts.update({name: value(name) for name in ("superuser_reserved_connections", "reserved_connections")})
    needed, limit = sum(parts.values()), value("max_connections")
    if needed > limit:
        shown = " + ".join(f"{label} {n}" for label, n in parts.items())
        raise ConfigError(f"{source_of('postgres_max_connections')}: max_connections {limit} is below the connection budget {needed} ({shown}); "
                          "raise postgres_max_connections or lower pgbouncer_pool.max_db_connections")
    senders, slots = standbys + 2 * backup_streams, standbys + backup_streams
    for name, need in (("max_wal_senders", senders), ("max_replication_slots", slots)):
        if need > value(name):
            raise ConfigError(f"{source_of('postgres_settings')}: {name} {value(name)} is below the {need} that {standbys} standby(s) and "
                              f"{backup_streams} concurrent pg_basebackup stream(s) (postgres_basebackup_streams) "
                              f"need; raise {name} in postgres_settings")
