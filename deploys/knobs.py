"""Every knob of the tier, declared once: its type, constraints, default and a one-line description.

group_data (all.py, <group>.py, <env>.py), inventory host data and `--data` set them; `check()` checks one
host's merged data before any operation, and deploys read the validated values (`knobs()`). Unknown keys are
refused with a suggestion, and every string that reaches a file, SQL or a shell is held to the shape it may have.
docs/knobs.md is generated from this file (`python -m deploys.knobs > docs/knobs.md`).

pydantic v2: a well-kept validator with strict typing (no "yes" taken for true), per-field errors with their
location, and a JSON-schema view the docs come from.
"""

import difflib
import ipaddress
import re
import sys
from typing import Annotated, ClassVar, Literal, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from deploys import pgconfig


class Kind:
    """What a constrained value is, in a reader's words (docs/knobs.md)."""

    def __init__(self, kind):
        self.kind = kind


class Shape(Kind):
    """A constrained string: a regular expression and the sentence that tells an SRE what fits."""

    def __init__(self, kind, pattern, hint, allow_empty=False):
        super().__init__(kind)
        self.pattern, self.hint, self.allow_empty = re.compile(pattern), hint, allow_empty

    def __call__(self, value):
        if value == "" and self.allow_empty:
            return value
        if not self.pattern.fullmatch(value):
            raise ValueError(self.hint)
        return value

    def optional(self):
        return Shape(f"{self.kind}, or empty", self.pattern.pattern, self.hint, allow_empty=True)


def _shaped(shape):
    return Annotated[str, AfterValidator(shape), shape]


def _digits(value):
    """pyinfra reads `--data restore_target_xid=809` as a number: a transaction id may arrive as one."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _address(value):
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("an IP address (or empty)") from None
    return value


def _network(value):
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"a network in CIDR form ({exc})") from None


def _no_dot_segments(value):
    if any(part in (".", "..") for part in value.split("/")):
        raise ValueError("no '.' or '..' segment")
    return value


ROLE = Shape("role name", r"[a-z_][a-z0-9_]{0,62}", "lower-case letters, digits and _, starting with a letter or _")
DATABASE = Shape("database name", r"[a-z_][a-z0-9_]{0,62}", "lower-case letters, digits and _, starting with a letter or _")
CLUSTER = Shape("cluster name", r"[a-z0-9_]{1,32}", "lower-case letters, digits and _")
HOST_PATH = Shape("absolute path on the host", r"/[A-Za-z0-9._/+-]*", "an absolute path of letters, digits and ._/+-")
LOCAL_PATH = Shape("path on the control machine", r"[A-Za-z0-9._/+-]+", "a path of letters, digits and ._/+-")
CALENDAR = Shape("systemd OnCalendar expression", r"[A-Za-z0-9*:/,.~ -]{1,64}",
                 "a systemd OnCalendar expression (letters, digits, space and *:/,.~-)")
URL = Shape("http(s) URL", r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?",
            "an http:// or https:// URL: host, optional port and path, no query")
REGION = Shape("cloud region", r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}", "a region such as us-east-1")
BUCKET = Shape("S3 bucket name", r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "an S3 bucket name: 3-63 of a-z, 0-9, '.' and '-'")
PREFIX = Shape("S3 key prefix", r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*",
               "path segments of letters, digits, '.', '_' and '-', each starting with a letter or digit")
KMS_KEY = Shape("KMS key id, ARN or alias", r"[A-Za-z0-9:/_-]{1,256}", "a KMS key id, ARN or alias/<name>")
HOST_NAME = Shape("inventory host name", r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", "an inventory host name")
LABEL = Shape("label", r"[a-z][a-z0-9_]{0,30}", "lower-case letters, digits and _")
SETTING_NAME = Shape("PostgreSQL parameter name", r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?",
                     "a PostgreSQL parameter name (an extension's as extension.name)")
# A value that lands inside quotes in postgresql.conf, an ALTER ROLE, a unit or an ini file: printable, one line.
SETTING_TEXT = Shape("parameter value", r"[^\x00-\x1f\x7f]*", "one line of printable characters")
LSN = Shape("LSN", r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}", "an LSN such as 16/B374D848")
RESTORE_POINT = Shape("restore point name", r"[A-Za-z0-9_.-]{1,63}", "letters, digits and _.-")
TIMESTAMP = Shape("timestamp with time zone", r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
                  r" ?([+-][0-9]{2}(:?[0-9]{2})?|Z|UTC)", "a timestamp with its zone, e.g. 2026-11-25 16:00:00+00")
XID = Shape("transaction id", r"[0-9]{1,20}", "a transaction id (digits)")
SCRAPE_USER = Shape("basic-auth user", r"[a-z][a-z0-9_-]{0,31}", "lower-case letters, digits, _ and -")

Role = _shaped(ROLE)
Database = _shaped(DATABASE)
HostPath = Annotated[_shaped(HOST_PATH), AfterValidator(_no_dot_segments)]
LocalPath = _shaped(LOCAL_PATH.optional())
Calendar = _shaped(CALENDAR)
OptionalUrl = _shaped(URL.optional())
HostName = _shaped(HOST_NAME)
Address = Annotated[str, AfterValidator(_address), Kind("IP address, or empty")]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[int, Field(ge=1, le=7 * 86400)]
SettingValue = str | int | float | bool


def _settings(values):
    """A mapping of PostgreSQL parameters, each name and value checked against PostgreSQL 17's catalogue."""
    for name, value in values.items():
        try:
            SETTING_NAME(name)
            if isinstance(value, str):
                SETTING_TEXT(value)
        except ValueError as exc:
            raise ValueError(f"{name!r}: {exc}") from None
    pgconfig.validate(values)
    return values


class Knobs(BaseModel):
    """Base of every component's knobs: strict types, no unknown key."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)
    applies: ClassVar[str] = ""


class SupportedOS(Knobs):
    name: _shaped(Shape("OS name", r"[A-Za-z][A-Za-z0-9 ]{0,31}", "an OS name as /etc/os-release gives it")) = "Debian"
    major: int = Field(13, ge=1, le=99)


class Base(Knobs):
    """The host baseline."""

    applies: ClassVar[str] = "every host"
    supported_os: SupportedOS = Field(SupportedOS(), description="The only OS the deploy accepts; any other is refused before a change.")
    secrets_source: Literal["generate", "operator"] = Field("generate", description="generate: the deploy makes the CA, certificates and passwords (local, staging); operator: they are supplied (prod).")
    secrets_dir: _shaped(LOCAL_PATH) = Field(".secrets/default", description="Where an environment's secrets are on the control machine, outside git (docs/secrets.md).")
    tls_days: int = Field(397, ge=1, le=3650, description="Validity of a certificate the deploy issues, in days.")
    tls_renew_days: int = Field(30, ge=1, le=365, description="A generated certificate this close to expiry is re-issued.")
    plain_http_endpoints: bool = Field(False, description="Accept http:// S3 and KMS endpoints (every *_endpoint_url): the local fleet's only, whose endpoint has no TLS; prod and staging refuse them.")


class HbaRule(Knobs):
    database: _shaped(Shape("databases", r"(all|replication|[a-z_][a-z0-9_]{0,62})(,[a-z_][a-z0-9_]{0,62})*",
                            "all, replication, or database names separated by commas"))
    user: _shaped(Shape("users", r"(all|\+?[a-z_][a-z0-9_]{0,62})(,\+?[a-z_][a-z0-9_]{0,62})*",
                        "all, or role names (+group for members) separated by commas"))
    address: Annotated[str, AfterValidator(_network), Kind("network (CIDR)")]
    method: Literal["scram-sha-256", "cert"] = "scram-sha-256"


class Postgres(Knobs):
    """PostgreSQL on the database hosts: packages, cluster, postgresql.conf and pg_hba.conf."""

    applies: ClassVar[str] = "database hosts"
    postgres_major: Literal[17] = Field(17, description="PostgreSQL's major version (the settings catalogue is 17's).")
    postgres_apt_repository: Literal["debian", "pgdg"] = Field("debian", description="Where PostgreSQL comes from: Debian's archive, or apt.postgresql.org (prod, when a minor release must land first).")
    postgres_pgdg_uri: _shaped(URL) = Field("https://apt.postgresql.org/pub/repos/apt", description="The PGDG repository or a mirror of it.")
    postgres_cluster: _shaped(CLUSTER) = Field("main", description="Debian's cluster name (pg_lsclusters).")
    postgres_port: Port = Field(5432, description="PostgreSQL's port.")
    postgres_listen_address: Address = Field("", description="Where PostgreSQL listens besides localhost; empty: the host's inventory address.")
    postgres_replication_user: Role = Field("replicator", description="The role replicas and pg_rewind connect as (in postgres_roles).")
    postgres_hba_extra: list[HbaRule] = Field([], description="More pg_hba.conf rules, hostssl only: {database, user, address (CIDR), method (scram-sha-256 or cert)}.")
    postgres_memory_budget_mb: int = Field(1024, ge=256, le=4 * 2**20, description="Memory PostgreSQL may use on the host; sizes shared_buffers and friends (not /proc/meminfo).")
    postgres_max_connections: int = Field(200, ge=10, le=10000, description="max_connections; the connection budget must fit in it (two PgBouncer hosts take 124 of the default 200).")
    postgres_direct_connections: dict[_shaped(LABEL), Annotated[int, Field(ge=0, le=10000)]] = Field(
        {"monitoring": 5, "jobs": 5, "operators": 5}, description="Connections made around PgBouncer, by purpose (counted in the connection budget).")
    postgres_basebackup_streams: int = Field(2, ge=0, le=16, description="pg_basebackup -X stream runs that may overlap (backup, a replica's clone).")
    postgres_wal_headroom_mb: int = Field(2048, ge=0, le=2**30, description="Free space the WAL volume keeps beyond max_slot_wal_keep_size.")
    postgres_settings: dict[str, SettingValue] = Field({}, description="postgresql.conf parameters over the tier's own (deploys/pgconfig.py), each checked against PostgreSQL 17's catalogue.")

    @field_validator("postgres_settings")
    @classmethod
    def _catalogue(cls, values):
        return _settings(values)


class RoleSpec(Knobs):
    login: bool = False
    replication: bool = False
    bypassrls: bool = False
    createdb: bool = False
    createrole: bool = False
    member_of: list[_shaped(Shape("role", r"[a-z_][a-z0-9_]{0,62}", "a role name"))] = []
    settings: dict[str, SettingValue] = {}

    @field_validator("settings")
    @classmethod
    def _catalogue(cls, values):
        return _settings(values)


DEFAULT_ROLES = {
    # Owns the SECURITY DEFINER functions the policies use and the dashboard; reads past RLS, never logs in.
    "portal_definer": {"bypassrls": True},
    "portal_owner": {"member_of": ["portal_definer"]},  # owns the portal's schema; nobody logs in as it
    "portal_app": {"login": True, "settings": {"statement_timeout": "30s", "lock_timeout": "5s",
                                                 "idle_in_transaction_session_timeout": "30s"}},
    "portal_admin": {"login": True, "settings": {"statement_timeout": "5min", "lock_timeout": "10s"}},
    "portal_reporting": {"login": True, "settings": {"default_transaction_read_only": "on", "statement_timeout": "10min"}},
    # The jobs' role (BYPASSRLS): they connect over the local socket as the OS user and take it with -c role=.
    "portal_maintenance": {"bypassrls": True, "settings": {"lock_timeout": "10s"}},
    "replicator": {"login": True, "replication": True},
    "pgbouncer_auth": {"login": True},
    "monitoring": {"login": True, "member_of": ["pg_monitor"]},
    # Writes the tier's heartbeat row through PgBouncer (deploys/heartbeat.py); nothing else.
    "heartbeat": {"login": True, "settings": {"statement_timeout": "5s", "lock_timeout": "1s"}},
}


class Roles(Knobs):
    """The tier's cluster-wide roles, made on the primary."""

    applies: ClassVar[str] = "the primary"
    postgres_roles: dict[Role, RoleSpec] = Field({n: RoleSpec(**s) for n, s in DEFAULT_ROLES.items()},
                                                description="Every role the deploy makes: {name: {login, replication, bypassrls, createdb, createrole, member_of, settings}}; roles not listed are left alone.")

    @field_validator("postgres_roles")
    @classmethod
    def _not_reserved(cls, roles):
        for name, spec in roles.items():
            if name.startswith("pg_"):
                raise ValueError(f"{name}: names starting with pg_ are PostgreSQL's own")
            if spec.login and spec.bypassrls:  # a password that reads every tenant's rows must not exist
                raise ValueError(f"{name}: a role with bypassrls may not log in; take it with SET ROLE or -c role= "
                                 "from a local session")
        return roles


class Replication(Knobs):
    """Streaming replication and what each database host does while it is a replica."""

    applies: ClassVar[str] = "database hosts"
    replica_purposes: dict[HostName, Literal["realtime", "reporting"]] = Field({}, description="{database host: purpose} while it is a replica: realtime (fresh reads, 10 MB lag, preferred for failover) unless named here, or reporting (long queries, 100 MB).")
    replica_lag_threshold_mb: dict[HostName, Annotated[int, Field(ge=1, le=2**20)]] = Field({}, description="{database host: MB} overriding its purpose's lag threshold (read-only routing, alerts, switchover).")
    synchronous_replication: bool = Field(False, description="Patroni's quorum mode: a commit returns once ANY 1 sync-eligible replica has flushed it.")
    replica_sync_eligible: dict[HostName, bool] = Field({}, description="{database host: false} leaves it out of the synchronous quorum (Patroni's nosync tag).")


class Patroni(Knobs):
    """Patroni: the cluster's consensus on who leads, failover, and PostgreSQL's process on every database host."""

    applies: ClassVar[str] = "database hosts"
    patroni_scope: _shaped(Shape("cluster name", r"[a-z][a-z0-9-]{0,62}", "lower-case letters, digits and -")) = Field("mcp-portal", description="The cluster's name in etcd (one per tier).")
    patroni_ttl: int = Field(25, ge=20, le=600, description="Seconds the leader lock lives without renewal: a leader that cannot renew it within this stops being writable, and a replica may take over.")
    patroni_loop_wait: int = Field(5, ge=1, le=300, description="Seconds between Patroni's checks on each member.")
    patroni_retry_timeout: int = Field(10, ge=3, le=300, description="Seconds Patroni retries etcd and PostgreSQL before it counts an operation failed.")
    patroni_maximum_lag_on_failover_mb: int = Field(1, ge=0, le=2**20, description="A replica more than this behind the leader (MB of WAL) is not promoted by a failover.")
    patroni_primary_start_timeout: int = Field(300, ge=0, le=3600, description="Seconds a crashed leader's PostgreSQL may take to start again in place before a failover; 0: fail over at once.")
    patroni_watchdog: Literal["off", "automatic", "required"] = Field("required", description="Patroni's watchdog (/dev/watchdog): required in prod and staging, so a leader that stops renewing its lock is reset; off on the fleet (its containers share one kernel).")
    patroni_restapi_port: Port = Field(8008, description="Patroni's REST API (HTTPS, on the host address).")

    @model_validator(mode="after")
    def _timings(self):
        if self.patroni_loop_wait + 2 * self.patroni_retry_timeout > self.patroni_ttl:
            raise ValueError(f"patroni_ttl {self.patroni_ttl} is less than patroni_loop_wait {self.patroni_loop_wait} "
                             f"+ 2 x patroni_retry_timeout {self.patroni_retry_timeout}: a leader could lose its lock "
                             "while it retries; raise patroni_ttl or lower the others")
        return self


class Etcd(Knobs):
    """etcd, Patroni's consensus store: three members by default, TLS and client certificates only."""

    applies: ClassVar[str] = "etcd members (the database hosts unless an etcd group names others)"
    etcd_client_port: Port = Field(2379, description="etcd's client port (HTTPS, client certificates from either of the tier's CAs: Patroni's is PostgreSQL's).")
    etcd_peer_port: Port = Field(2380, description="etcd's peer port (HTTPS, peer certificates from the tier's CA).")
    etcd_heartbeat_interval_ms: int = Field(100, ge=10, le=5000, description="etcd's heartbeat interval.")
    etcd_election_timeout_ms: int = Field(1000, ge=100, le=50000, description="etcd's election timeout (at least 5 heartbeats).")
    etcd_minimum_members: int = Field(3, ge=1, le=9, description="Fewer etcd members than this are refused: 3 survive the loss of one.")

    @model_validator(mode="after")
    def _election(self):
        if self.etcd_election_timeout_ms < 5 * self.etcd_heartbeat_interval_ms:
            raise ValueError(f"etcd_election_timeout_ms {self.etcd_election_timeout_ms} is less than 5 heartbeats "
                             f"(etcd_heartbeat_interval_ms {self.etcd_heartbeat_interval_ms})")
        return self


class Routing(Knobs):
    """HAProxy beside PgBouncer: the read-write entry follows Patroni's leader, the read-only entry its replicas."""

    applies: ClassVar[str] = "PgBouncer hosts"
    haproxy_primary_port: Port = Field(5000, description="HAProxy's listener (loopback) for the leader; PgBouncer's read-write entry.")
    haproxy_replica_port: Port = Field(5001, description="HAProxy's listener (loopback) for the replicas within their lag; PgBouncer's read-only entry.")
    haproxy_check_interval_ms: int = Field(1000, ge=100, le=60000, description="How often HAProxy asks each member's Patroni what it is.")
    haproxy_check_fall: int = Field(3, ge=1, le=10, description="Failed checks before HAProxy takes a member out (its connections are closed).")
    haproxy_check_rise: int = Field(1, ge=1, le=10, description="Passed checks before HAProxy sends connections to a member.")


class PoolSettings(Knobs):
    pool_mode: Literal["session", "transaction", "statement"] = "transaction"
    max_client_conn: int = Field(1000, ge=1, le=100000)
    default_pool_size: int = Field(25, ge=1, le=10000)
    min_pool_size: int = Field(10, ge=0, le=10000)
    reserve_pool_size: int = Field(5, ge=0, le=10000)
    reserve_pool_timeout: int = Field(5, ge=0, le=3600)
    server_idle_timeout: int = Field(600, ge=0, le=86400)
    server_lifetime: int = Field(3600, ge=0, le=86400)
    query_wait_timeout: int = Field(120, ge=0, le=86400)
    max_db_connections: int = Field(30, ge=1, le=10000)


class Pooler(Knobs):
    """PgBouncer and the portal's database it fronts."""

    applies: ClassVar[str] = "PgBouncer hosts (and the primary, for the databases)"
    portal_database: Database = Field("portal", description="The portal's database.")
    portal_database_owner: Literal["portal_owner"] = Field("portal_owner", description="Owner of the portal's database; the migrations make their objects for portal_owner.")
    portal_database_users: list[Role] = Field(["portal_app", "portal_admin", "portal_reporting", "portal_maintenance", "monitoring", "heartbeat"],
                                              description="Roles that may connect to the portal's database (each in postgres_roles).")
    pgbouncer_port: Port = Field(6432, description="PgBouncer's port.")
    pgbouncer_listen_address: Address = Field("", description="Where PgBouncer listens; empty: the host's inventory address.")
    pgbouncer_rw_entry: Database = Field("portal", description="PgBouncer's database entry that reaches the primary.")
    pgbouncer_ro_entry: Database = Field("portal_ro", description="PgBouncer's database entry that reaches the replicas.")
    pgbouncer_auth_user: Role = Field("pgbouncer_auth", description="The role PgBouncer looks passwords up as (auth_query).")
    pgbouncer_auth_database: Database = Field("auth_lookup", description="The auth lookup's own database ('pgbouncer' is the admin console's).")
    pgbouncer_stats_users: list[Role] = Field(["monitoring"], description="PgBouncer stats_users (the exporter's login).")
    pgbouncer_pool: PoolSettings = Field(PoolSettings(), description="Pool sizing keys (pool_mode, max_client_conn, default_pool_size, min_pool_size, reserve_pool_size, reserve_pool_timeout, server_idle_timeout, server_lifetime, query_wait_timeout, max_db_connections), each over its default.")

    @field_validator("pgbouncer_auth_database")
    @classmethod
    def _not_the_console(cls, value):
        if value == "pgbouncer":
            raise ValueError("'pgbouncer' is PgBouncer's admin console")
        return value


class Heartbeat(Knobs):
    """The tier's heartbeat, written through PgBouncer."""

    applies: ClassVar[str] = "PgBouncer hosts (writer), the primary (table)"
    heartbeat_user: Role = Field("heartbeat", description="The role that writes the heartbeat.")
    heartbeat_readers: list[Role] = Field(["monitoring"], description="Roles that may read it.")
    heartbeat_interval_s: Literal[1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60] = Field(10, description="Seconds between beats: a divisor of 60.")


class Archive(Knobs):
    """WAL archiving to S3."""

    applies: ClassVar[str] = "database hosts"
    wal_archive_endpoint_url: OptionalUrl = Field("", description="S3 endpoint; empty: AWS's own for the region.")
    wal_archive_region: _shaped(REGION) = Field("us-east-1", description="The bucket's region.")
    wal_archive_bucket: _shaped(BUCKET.optional()) = Field("", description="The bucket that holds the WAL archive and base backups (required on database hosts).")
    wal_archive_prefix: Annotated[_shaped(PREFIX), AfterValidator(_no_dot_segments)] = Field("tier", description="The cluster's place in the bucket; one cluster per prefix.")
    wal_archive_sse: Literal["AES256", "aws:kms"] = Field("AES256", description="Server-side encryption: SSE-S3, or aws:kms with wal_archive_kms_key_id.")
    wal_archive_kms_key_id: _shaped(KMS_KEY.optional()) = Field("", description="The KMS key for aws:kms.")
    wal_archive_compression: Literal["none", "gzip"] = Field("gzip", description="Compression of archived segments.")
    wal_archive_credentials: LocalPath = Field("", description="The archive's S3 keys (JSON: access_key_id, secret_access_key; put, get, list); empty: <secrets_dir>/s3/wal-archiver.json.")
    wal_restore_prefetch: int = Field(8, ge=0, le=64, description="restore_command fetches this many segments ahead, in parallel, into a spool in pg_wal (16 MiB each, removed when recovery ends); 0: one at a time.")
    wal_archive_preflight: bool = Field(True, description="Check the archive from the control machine before deploying; off only to ship an urgent change during an S3 outage.")

    @model_validator(mode="after")
    def _kms_needs_a_key(self):
        if self.wal_archive_sse == "aws:kms" and not self.wal_archive_kms_key_id:
            raise ValueError("wal_archive_kms_key_id is empty but wal_archive_sse is aws:kms; set the KMS key id or alias")
        return self


class Backups(Knobs):
    """Base backups, retention, the restore drill and point-in-time restores."""

    applies: ClassVar[str] = "database hosts"
    backup_schedule: Calendar = Field("*-*-* 02:00:00", description="When the base backup runs (systemd OnCalendar; a missed run runs at boot).")
    backup_full_every_days: float = Field(7, ge=0, le=365, description="A base backup is incremental on the newest one (pg_basebackup --incremental, summarize_wal) until the full backup its chain starts with is this many days old; then a full one. 0: every backup full.")
    backup_work_dir: HostPath = Field("/var/lib/postgresql/backup-work", description="Scratch space for a backup before upload, and for combining its chain to verify it; while backups are incremental it also keeps the last backup's verified copy (room for the database about three times).")
    backup_timeout_s: Seconds = Field(6 * 3600, description="A backup or drill that runs longer fails.")
    backup_retention_days: float = Field(30, gt=0, le=3650, description="A restore to any moment of this many days stays possible. The bucket's default COMPLIANCE lock must cover it, plus backup_max_age_h and backup_full_every_days (the preflight checks; docs/backups.md).")
    backup_retention_schedule: Calendar = Field("*-*-* 04:00:00", description="When retention runs.")
    backup_retention_max_delete_percent: float = Field(25, gt=0, le=100, description="A retention run that would delete more of the archive's object versions deletes nothing and fails (a forged record or a wrong window must not empty the archive).")
    backup_retention_credentials: LocalPath = Field("", description="Keys that may delete (JSON like wal_archive_credentials); empty: <secrets_dir>/s3/backup-retention.json.")
    drill_schedule: Calendar = Field("Sun *-*-* 05:00:00", description="When the restore drill runs.")
    drill_scratch_dir: HostPath = Field("/var/lib/postgresql/restore-drill", description="The drill's scratch space.")
    drill_port: Port = Field(5434, description="The drill's scratch cluster's port.")
    drill_wait_s: Seconds = Field(900, description="How long the drill waits for its canary's WAL and for recovery.")
    restore_host: _shaped(HOST_NAME.optional()) = Field("", description="restore.py: the database host to restore onto.")
    restore_cluster: _shaped(CLUSTER) = Field("restore", description="restore.py: the new cluster's name.")
    restore_port: Port = Field(5433, description="restore.py: the new cluster's port.")
    restore_target_time: _shaped(TIMESTAMP.optional()) = Field("", description="restore.py: recover to this time.")
    restore_target_lsn: _shaped(LSN.optional()) = Field("", description="restore.py: recover to this LSN.")
    restore_target_xid: Annotated[_shaped(XID.optional()), BeforeValidator(_digits)] = Field("", description="restore.py: recover to this transaction.")
    restore_target_name: _shaped(RESTORE_POINT.optional()) = Field("", description="restore.py: recover to this restore point.")
    restore_wait_s: Seconds = Field(1800, description="restore.py: how long recovery may take.")
    restore_source_prefix: Annotated[_shaped(PREFIX.optional()), AfterValidator(_no_dot_segments)] = Field("", description="Restore from another environment's archive (a staging rebuild): its prefix.")
    restore_source_bucket: _shaped(BUCKET.optional()) = Field("", description="Its bucket; empty: wal_archive_bucket.")
    restore_source_region: _shaped(REGION.optional()) = Field("", description="Its region; empty: wal_archive_region.")
    restore_source_endpoint_url: OptionalUrl = Field("", description="Its endpoint; empty: wal_archive_endpoint_url.")
    restore_source_credentials: LocalPath = Field("", description="Read-only keys for it; empty: <secrets_dir>/s3/restore-source.json.")

    @model_validator(mode="after")
    def _one_target(self):
        targets = [t for t in ("time", "lsn", "xid", "name") if getattr(self, f"restore_target_{t}")]
        if len(targets) > 1:
            raise ValueError(f"restore_target_{targets[0]}: set one restore_target_* key, not "
                             f"{', '.join('restore_target_' + t for t in targets)}")
        return self


class Schema(Knobs):
    """The portal's schema and its scheduled jobs."""

    applies: ClassVar[str] = "database hosts (migrations on the primary)"
    schema_lock_timeout: Annotated[str, Kind("PostgreSQL duration")] = Field("5s", description="How long a migration waits for a lock before it fails cleanly (re-run to retry).")
    audit_partitions_schedule: Calendar = Field("*-*-* 03:30:00", description="When audit partitions are made ahead and old months archived.")
    audit_partitions_ahead: int = Field(3, ge=1, le=24, description="Months of audit partitions made ahead.")
    audit_partitions_min_ahead: int = Field(2, ge=1, le=24, description="The job fails (and alerts) below this many months ahead.")
    dashboard_refresh_schedule: Calendar = Field("*:0/5", description="When the dashboard view is refreshed.")

    @field_validator("schema_lock_timeout")
    @classmethod
    def _duration(cls, value):
        _settings({"lock_timeout": value})
        return value

    @model_validator(mode="after")
    def _ahead(self):
        if self.audit_partitions_min_ahead > self.audit_partitions_ahead:
            raise ValueError(f"audit_partitions_ahead {self.audit_partitions_ahead} is less than "
                             f"audit_partitions_min_ahead {self.audit_partitions_min_ahead}: make partitions at least as "
                             "far ahead as the job requires")
        return self


class Encryption(Knobs):
    """The portal's envelope encryption."""

    applies: ClassVar[str] = "database hosts"
    portal_kms_key_id: _shaped(KMS_KEY.optional()) = Field("", description="The KMS key that wraps the portal's data keys (required).")
    portal_kms_region: _shaped(REGION) = Field("us-east-1", description="Its region.")
    portal_kms_endpoint_url: OptionalUrl = Field("", description="KMS endpoint; empty: AWS's own for the region.")
    portal_kms_credentials: LocalPath = Field("", description="JSON keys allowed GenerateDataKey and Decrypt on that key; empty: <secrets_dir>/kms/portal-keys.json.")
    key_rotation_batch: int = Field(500, ge=1, le=100_000, description="Rows per transaction when data keys rotate.")


class Monitoring(Knobs):
    """Exporters and the alerts' limits."""

    applies: ClassVar[str] = "every host of the tier"
    metrics_listen_address: Address = Field("", description="Where the exporters listen; empty: the host's inventory address.")
    node_exporter_port: Port = Field(9100, description="The node exporter's port.")
    postgres_exporter_port: Port = Field(9187, description="The PostgreSQL exporter's port.")
    pgbouncer_exporter_port: Port = Field(9127, description="The PgBouncer exporter's port.")
    metrics_scrape_user: _shaped(SCRAPE_USER) = Field("prometheus", description="Prometheus's basic-auth user.")
    metrics_role: Role = Field("monitoring", description="The login the exporters use (pg_monitor, stats_users).")
    wal_archive_max_age_s: int = Field(900, ge=1, le=86400 * 7, description="Oldest a primary's last archived WAL may be.")
    backup_max_age_h: float = Field(26, gt=0, le=24 * 365, description="Oldest a primary's last base backup may be.")
    backup_retention_max_age_h: float = Field(26, gt=0, le=24 * 365, description="Oldest the last retention run may be.")
    drill_max_age_h: float = Field(8 * 24, gt=0, le=24 * 365, description="Oldest the last passed restore drill may be.")


COMPONENTS = (Base, Postgres, Roles, Replication, Patroni, Etcd, Routing, Pooler, Heartbeat, Archive, Backups, Schema,
              Encryption, Monitoring)


class Tier(*COMPONENTS):
    """Every knob of the tier, for one host."""

    @model_validator(mode="after")
    def _https_endpoints(self):
        if not self.plain_http_endpoints:  # credentials and data keys would cross the network in clear
            for name in (n for n in type(self).model_fields if n.endswith("_endpoint_url")):
                if getattr(self, name).startswith("http://"):
                    raise ValueError(f"{name} = {getattr(self, name)!r}: plain http; use an https:// endpoint "
                                     "(plain_http_endpoints = True is for the local fleet's endpoint only)")
        return self


KNOBS = tuple(Tier.model_fields)


class KnobError(ValueError):
    """One line: the host, where the key was set, the key and what to do."""


_validated = {}
# Knobs keyed by database host name.
PER_DATABASE_HOST = ("replica_purposes", "replica_lag_threshold_mb", "replica_sync_eligible")


def knobs(of=None):
    """The validated knobs of pyinfra host `of` (default: the host being planned), checked once per run."""
    from pyinfra import host
    from pyinfra.api.exceptions import DeployError

    from deploys.datasource import source_of
    of = host if of is None else of  # not `of or host`: a pyinfra Host has no truth value
    if of.name not in _validated:
        try:
            _validated[of.name] = check(of.data.dict(), of.name, lambda key: source_of(key, of))
        except KnobError as exc:
            raise DeployError(str(exc)) from None
    return _validated[of.name]


def check_inventory():
    """The inventory's shape, every host's name and knobs, before any fact is gathered or operation planned: the
    first problem stops the run (host names reach unit files and SQL: they are held to a host name's shape too)."""
    from pyinfra import inventory, state
    from pyinfra.api.exceptions import DeployError

    from deploys.base import inventory_problem
    from deploys.datasource import source_of
    problem = inventory_problem({name: [h.name for h in inventory.get_group(name, [])]
                                 for name in ("primary", "replicas", "database", "pgbouncer")})
    if problem:
        raise DeployError(problem)
    # Hosts outside --limit are not connected to, and not deployed to.
    unreachable = sorted(h.name for h in inventory if state.is_host_in_limit(h) and not h.connected)
    if unreachable:  # pyinfra goes on planning for the others; the tier is deployed whole or not at all
        raise DeployError(f"{', '.join(unreachable)}: unreachable over ssh (Could not connect, above); bring it back "
                          "or take it out of the inventory, then run again")
    database_hosts = [h.name for h in inventory.get_group("database", [])]
    for each in inventory:
        try:
            HOST_NAME(each.name)
        except ValueError as exc:
            raise DeployError(f"inventory host {each.name!r}: {exc}") from None
        k = knobs(each)
        for knob in PER_DATABASE_HOST:
            strangers = sorted(set(getattr(k, knob)) - set(database_hosts))
            if strangers:
                raise DeployError(f"{each.name}: {source_of(knob, each)}: {knob} names {', '.join(strangers)}, not a "
                                  f"database host of the inventory ({', '.join(database_hosts)})")


def unknown(keys):
    """The keys that are neither knobs nor pyinfra's own (connector data, global arguments)."""
    from pyinfra.api.arguments import all_global_arguments
    from pyinfra.connectors.ssh import connector_data_meta
    pyinfras = {name for name, _ in all_global_arguments()} | set(connector_data_meta)
    return sorted(k for k in keys if k not in Tier.model_fields and k not in pyinfras)


def check(values, host_name, source_of):
    """The host's knobs from its merged data `values` ({key: value}, pyinfra's own keys included), or KnobError.
    `source_of(key)` names where a key was set."""
    for key in unknown(values):
        close = difflib.get_close_matches(key, KNOBS, n=1)
        hint = f"did you mean {close[0]}?" if close else "docs/knobs.md lists every knob"
        raise KnobError(f"{host_name}: {source_of(key)}: {key}: unknown knob; {hint}")
    try:
        return Tier(**{k: v for k, v in values.items() if k in Tier.model_fields})
    except ValidationError as exc:
        raise KnobError(_first_problem(exc, values, host_name, source_of)) from None
    except pgconfig.ConfigError as exc:
        raise KnobError(f"{host_name}: {exc}") from None


# pydantic's words where an SRE's are shorter.
READABLE = {
    "literal_error": lambda e: f"use {e['ctx']['expected']}",
    "bool_type": lambda e: "use true or false",
    "bool_parsing": lambda e: "use true or false",
}


def _first_problem(exc, values, host_name, source_of):
    error = exc.errors()[0]
    location = [str(part) for part in error["loc"]]
    message = READABLE.get(error["type"], lambda e: e["msg"].removeprefix("Value error, "))(error)
    if not location:  # a check across knobs of one component: its message starts with the knob it is about
        key = message.split()[0]
        return f"{host_name}: {source_of(key)}: {message}"
    key = location[0]
    path = key + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in location[1:])
    shown = f" = {error['input']!r}" if not isinstance(error["input"], (dict, list)) else ""
    if error["type"] == "extra_forbidden":
        known = ", ".join(_model_at(location[:-1]).model_fields)
        return f"{host_name}: {source_of(key)}: {path}: unknown key; {path.rsplit('.', 1)[0]} takes {known}"
    return f"{host_name}: {source_of(key)}: {path}{shown}: {message}"


def _model_at(location):
    """The model whose field `location` (a validation error's path) names."""
    annotation = Tier.model_fields[location[0]].annotation
    for _ in location[1:]:
        while get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
        if get_origin(annotation) in (dict, list):
            annotation = get_args(annotation)[-1]
        else:
            annotation = annotation.model_fields[_].annotation
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


# -- docs/knobs.md ---------------------------------------------------------------------------------------------

def describe(annotation, metadata=()):
    """A reader's name for a knob's type: its annotation and (for a top-level field) the metadata pydantic keeps
    apart from it."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return describe(args[0], args[1:])
    metadata = [m for item in metadata for m in (item.metadata if isinstance(item, FieldInfo) else [item])]
    kind = next((m.kind for m in metadata if isinstance(m, Kind)), None)
    if kind:
        return kind
    bound = {name: next((getattr(m, name) for m in metadata if getattr(m, name, None) is not None), None)
             for name in ("ge", "gt", "le")}
    low = bound["ge"] if bound["ge"] is not None else (f"more than {bound['gt']}" if bound["gt"] is not None else None)
    bounds = f" {low}..{bound['le']}" if low is not None and bound["le"] is not None else ""
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is dict:
        return f"mapping of {describe(args[0])} to {describe(args[1])}"
    if origin is list:
        return f"list of {describe(args[0])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table (" + ", ".join(annotation.model_fields) + ")"
    if args:  # a union
        return " or ".join(describe(a) for a in args)
    return {str: "text", int: "integer", float: "number", bool: "true or false"}.get(annotation, str(annotation)) + bounds


def _default(value):
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
        return "see deploys/knobs.py"
    text = repr(value)
    return "`" + text.replace("|", "\\|") + "`" if len(text) < 90 else "see deploys/knobs.py"


def markdown():
    lines = ["# Knobs", "", "Generated from `deploys/knobs.py` by `python -m deploys.knobs`: do not edit. Set a knob in",
             "`group_data/all.py`, `group_data/<group>.py`, `group_data/<env>.py`, as inventory host data or with",
             "`--data key=value`; an unknown key or a value of the wrong shape stops the deploy before any host changes.", ""]
    for component in COMPONENTS:
        lines += [f"## {component.__name__}: {component.__doc__.strip().splitlines()[0]}", "",
                  f"Applies to: {component.applies}.", "", "| knob | type | default | description |", "|---|---|---|---|"]
        for name in component.__annotations__:
            field = component.model_fields.get(name)
            if field is None:
                continue
            kind = describe(field.annotation, field.metadata)
            lines.append(f"| `{name}` | {kind} | {_default(field.default)} | {field.description} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown())
