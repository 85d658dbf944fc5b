"""Metrics for Prometheus: Debian's node exporter on every host (with the tier's textfile metrics), the PostgreSQL
exporter on the database hosts and the PgBouncer exporter on the PgBouncer hosts. Each listens on one address,
HTTPS with the tier's certificate, basic auth. Alert rules: monitoring/alerts.yml; docs/monitoring.md.

The configuration is in place before a package is first installed (apt keeps an existing /etc/default file),
so no exporter ever listens unprotected.
"""

import urllib.parse

import bcrypt
from cryptography import x509
from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.facts.files import FindInFile
from pyinfra.operations import files, server, systemd

from deploys import etcd, secrets, ship, tls
from deploys.datasource import address_of
from deploys.knobs import knobs
from deploys.packages import install
from deploys.replication import lag_threshold_mb, slot_name
from hostside import layout, textfile

METRICS_DIR = layout.METRICS_DIR
TLS_DIR = layout.config("exporter-tls")
WEB_CONFIG = layout.config("exporter-web.yml")
QUERIES = layout.config("postgres-exporter-queries.yaml")
EXPORTER_USER = "prometheus"  # Debian's exporters run as it (the PgBouncer one is moved to it)


def _listen(port):
    return f"{knobs().metrics_listen_address or address_of(host)}:{port}"


def _password_hash(user):
    """The bcrypt hash of the scrape password: the one on the host when it still matches (bcrypt salts every
    hash, so a new one each run would be a change each run), else a new one."""
    password = secrets.password(f"scrape_{user}").encode()
    lines = host.get_fact(FindInFile, path=WEB_CONFIG, pattern=f"^  {user}: ") or []
    for line in lines:
        current = line.split(": ", 1)[1].strip()
        if bcrypt.checkpw(password, current.encode()):
            return current
    return bcrypt.hashpw(password, bcrypt.gensalt(10)).decode()


def _tier_gauges(database_host):
    """The static half of the alerts' comparisons: limits from group_data, the certificate's expiry (tier.prom)."""
    k = knobs()
    # The certificates this host holds: the exporters'; PostgreSQL's; the host's own, for PgBouncer or etcd.
    roles = (["exporter"] + ([tls.DATABASE_ROLE] if database_host else [])
             + ([""] if "pgbouncer" in host.groups or host in etcd.members() else []))
    expiries = [x509.load_pem_x509_certificate(tls.local_files(role)[0].read_bytes()).not_valid_after_utc for role in roles]
    gauges = [("mcp_tls_certificate_not_after_timestamp_seconds",
               "When the first TLS certificate this host holds expires (PostgreSQL's, its own, its exporters').", int(min(expiries).timestamp()))]
    if database_host:
        gauges += [
            ("mcp_wal_archive_max_age_seconds", "Oldest a primary's last archived WAL may be (wal_archive_max_age_s).",
             k.wal_archive_max_age_s),
            ("mcp_base_backup_max_age_seconds", "Oldest a primary's last base backup may be (backup_max_age_h).",
             k.backup_max_age_h * 3600),
            ("mcp_base_backup_full_max_age_seconds", "Oldest the full backup the last backup's chain starts with may "
             "be (backup_full_every_days, and backup_max_age_h for the run that takes the next one).",
             k.backup_full_every_days * 86400 + k.backup_max_age_h * 3600),
            ("mcp_backup_retention_max_age_seconds", "Oldest a primary's last retention run may be.",
             k.backup_retention_max_age_h * 3600),
        ]
        # On every database host, as any of them may be the leader the others stream from.
        gauges += [("mcp_replication_lag_threshold_bytes", "WAL the member with this slot may replay behind the "
                    "leader (replica_purposes, replica_lag_threshold_mb).", lag_threshold_mb(member.name) * 2**20,
                    {"slot_name": slot_name(member.name)}) for member in inventory.get_group("database", [])]
        gauges.append(("mcp_restore_drill_max_age_seconds", "Oldest the last passed restore drill may be.",
                       k.drill_max_age_h * 3600))
        gauges.append(("mcp_watchdog_required", "1 when Patroni requires a watchdog here (patroni_watchdog).",
                       int(k.patroni_watchdog == "required")))
    return gauges


def _exporter(package, environment, args, restart=False):
    """Configure, then install (apt keeps the configuration), then run one exporter. The configuration holds the
    exporter's database password: written as a private file."""
    config = secrets.put_private(f"{package}'s configuration",
                                 ship.render("templates/exporter.default.j2", environment=environment, args=args),
                                 f"/etc/default/{package}", user=EXPORTER_USER, group=EXPORTER_USER, mode="640")
    install(f"Install {package}", packages=[package], no_recommends=True)
    systemd.service(name=f"{package} runs and starts at boot", service=package, running=True, enabled=True,
                    restarted=restart or config.will_change)


@deploy("Metrics: node exporter and the tier's textfile metrics")
def node_metrics(database_host):
    """Every host: the exporters' user, certificate and web configuration, then the node exporter."""
    server.group(name="The exporters' group", group=EXPORTER_USER, system=True)
    server.user(name="The exporters' user", user=EXPORTER_USER, group=EXPORTER_USER, system=True,
                home="/var/lib/prometheus", shell="/usr/sbin/nologin", create_home=False)
    # A key of their own: the exporters' user never holds the key that proves this host to PostgreSQL's clients.
    tls.certificates(owner=EXPORTER_USER, remote=TLS_DIR, role="exporter")
    user = knobs().metrics_scrape_user
    web = ship.render("templates/exporter-web.yml.j2", tls=TLS_DIR, user_name=user, password_hash=_password_hash(user))
    secrets.put_private("The exporters' web configuration (HTTPS, basic auth)", web, WEB_CONFIG, group=EXPORTER_USER,
                        mode="640")
    # The database hosts' programs write here as postgres, and some as root: root owns the directory and postgres's
    # group may add files, sticky, so postgres can never replace or remove a file root wrote (tier.prom below, whose
    # owner and mode pyinfra sets after its rename). Root's programs write through hostside/files.py, never a link.
    files.directory(name="The tier's textfile metrics", path=METRICS_DIR, user="root",
                    group="postgres" if database_host else "root", mode="1775" if database_host else "755")
    limits = "# Written by deploy.py (deploys/monitoring.py): what monitoring/alerts.yml compares this host with.\n"
    ship.file("The alerts' limits for this host", limits + textfile.render(_tier_gauges(database_host)),
              f"{METRICS_DIR}/tier.prom", "644")
    _exporter("prometheus-node-exporter", {}, [
        f"--web.listen-address={_listen(knobs().node_exporter_port)}", f"--web.config.file={WEB_CONFIG}",
        f"--collector.textfile.directory={METRICS_DIR}", *(["--collector.watchdog"] if database_host else [])])


def _dsn(user, database, port):
    password = urllib.parse.quote(secrets.password(user), safe="")
    return f"postgresql://{user}:{password}@/{database}?host=/var/run/postgresql&port={port}&sslmode=disable"


@deploy("Metrics: PostgreSQL exporter")
def postgres_metrics():
    queries = ship.copy("The tier's exporter queries", "monitoring/postgres-exporter-queries.yaml", QUERIES, "644")
    _exporter("prometheus-postgres-exporter", {
        "DATA_SOURCE_NAME": _dsn(knobs().metrics_role, "postgres", knobs().postgres_port),
    }, [f"--web.listen-address={_listen(knobs().postgres_exporter_port)}", f"--web.config.file={WEB_CONFIG}",
        f"--extend.query-path={QUERIES}", "--collector.database_wraparound", "--collector.stat_wal_receiver"],
        restart=queries.will_change)


@deploy("Metrics: PgBouncer exporter")
def pgbouncer_metrics():
    # Debian runs it as postgres; as the exporters' user it can read their certificate. No PgBouncer process
    # metrics (empty pid file): those need the postgres user.
    unit = ship.file("Run the PgBouncer exporter as the exporters' user", f"[Service]\nUser={EXPORTER_USER}\n",
                     "/etc/systemd/system/prometheus-pgbouncer-exporter.service.d/mcp-portal.conf", "644",
                     create_remote_dir=True)
    if unit.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    _exporter("prometheus-pgbouncer-exporter", {
        "PGBOUNCER_EXPORTER_CONNECTION_STRING": _dsn(knobs().metrics_role, "pgbouncer", knobs().pgbouncer_port),
    }, [f"--web.listen-address={_listen(knobs().pgbouncer_exporter_port)}", f"--web.config.file={WEB_CONFIG}",
        "--pgBouncer.pid-file="], restart=unit.will_change)
