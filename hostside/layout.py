"""Where the tier's things are on a host, derived once: the deploys, ha/ and the host-side programs read it here.

Installed with the host-side programs (deploys/hostside.py), so a program and the deploy never disagree on a path.
"""

from typing import NamedTuple

LIB_DIR = "/usr/local/lib/mcp-portal"  # this package, as hostside/
LAUNCHER_DIR = "/usr/local/sbin"  # one launcher per program, mcp-<program> (deploys/hostside.py)
CONFIG_DIR = "/etc/mcp-portal"
STATE_DIR = "/var/lib/mcp-portal"
METRICS_DIR = f"{STATE_DIR}/metrics"  # node-exporter's textfile collector
FAILURES_DIR = f"{STATE_DIR}/failures"
TLS_DIR = f"{CONFIG_DIR}/tls"  # the host's certificate, key and the tier's CA, for PostgreSQL and PgBouncer
SOCKET_DIR = "/var/run/postgresql"
PGBOUNCER_PIDFILE = f"{SOCKET_DIR}/pgbouncer.pid"
# On a PgBouncer host: the [databases] lines mcp-follow-leader writes and PgBouncer includes (its unit's StateDirectory).
LEADER_ENTRIES = "/var/lib/mcp-portal-follow/leader.ini"

# The programs that run on the hosts: hostside/<module>.py, started as LAUNCHER_DIR/mcp-<name>.
PROGRAMS = {
    "wal-archive": "wal_archive",
    "base-backup": "base_backup",
    "restore-drill": "restore_drill",
    "portal-jobs": "portal_jobs",
    "rotate-keys": "rotate_keys",
    "staging-scrub": "staging_scrub",
    "cluster": "cluster",
    "follow-leader": "follow_leader",  # the one on PgBouncer hosts
}
POOLER_PROGRAMS = ("follow-leader",)  # needs only Python's standard library

# Lowering one of these on a primary stops a standby that still has the higher value: each with its line in
# pg_controldata, where a standby records the value it replayed from the primary.
HOT_STANDBY_SENSITIVE = {
    "max_connections": "max_connections setting",
    "max_worker_processes": "max_worker_processes setting",
    "max_wal_senders": "max_wal_senders setting",
    "max_prepared_transactions": "max_prepared_xacts setting",
    "max_locks_per_transaction": "max_locks_per_xact setting",
}


def program(name):
    """The launcher of host-side program `name` (a key of PROGRAMS)."""
    if name not in PROGRAMS:
        raise KeyError(f"no host-side program {name!r}")
    return f"{LAUNCHER_DIR}/mcp-{name}"


def config(name):
    """A configuration file the deploy writes for the programs."""
    return f"{CONFIG_DIR}/{name}"


class Cluster(NamedTuple):
    """A Debian PostgreSQL cluster (pg_lsclusters): major version and name."""

    major: int
    name: str

    @property
    def label(self):
        return f"{self.major}/{self.name}"

    @property
    def data_directory(self):
        return f"/var/lib/postgresql/{self.major}/{self.name}"

    @property
    def wal_directory(self):
        return f"{self.data_directory}/pg_wal"

    @property
    def config_directory(self):
        return f"/etc/postgresql/{self.major}/{self.name}"

    @property
    def bin_directory(self):
        return f"/usr/lib/postgresql/{self.major}/bin"

    @property
    def lib_directory(self):
        """The server's $libdir: the shared libraries of its modules."""
        return f"/usr/lib/postgresql/{self.major}/lib"

    @property
    def extension_directory(self):
        """The extensions' control files and scripts."""
        return f"/usr/share/postgresql/{self.major}/extension"

    @property
    def unit(self):
        return f"postgresql@{self.major}-{self.name}"

    @property
    def patroni_unit(self):
        """Debian's Patroni instance for this cluster (PostgreSQL runs under it, never as postgresql@)."""
        return f"patroni@{self.major}-{self.name}"

    @property
    def patroni_config(self):
        return f"/etc/patroni/{self.major}-{self.name}.yml"

    @property
    def log_file(self):
        return f"/var/log/postgresql/postgresql-{self.major}-{self.name}.log"

    def bin(self, tool):
        return f"{self.bin_directory}/{tool}"
