"""Base backups on a timer (verified, uploaded next to the WAL archive, on the primary only) and point-in-time
restores from them (restore.py). hostside/base_backup.py does the work on the host; docs/backups.md."""

import io
import json

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import files, server, systemd

from deploys import secrets
from deploys.archive import DEFAULTS as ARCHIVE_DEFAULTS, UNIT as ARCHIVE_UNIT
from deploys.datasource import source_of
from deploys.facts import PostgresClusters
from deploys.postgres import DEFAULTS as POSTGRES_DEFAULTS

DEFAULTS = {
    **secrets.DEFAULTS,
    "postgres_major": POSTGRES_DEFAULTS["postgres_major"],
    # systemd OnCalendar syntax; a run missed while the host was down runs at boot (Persistent=true).
    "backup_schedule": "*-*-* 02:00:00",
    "backup_work_dir": "/var/lib/postgresql/backup-work",
    "backup_timeout_s": 6 * 3600,
    # A restore to any moment of this many days stays possible (the assessment's 30 days).
    "backup_retention_days": 30,
    "backup_retention_schedule": "*-*-* 04:00:00",
    # Keys that may delete (JSON like wal_archive_credentials); empty: <secrets_dir>/s3/backup-retention.json.
    "backup_retention_credentials": "",
    # The restore drill: on this host (empty: the first replica, else the primary), into scratch space.
    "drill_host": "",
    "drill_schedule": "Sun *-*-* 05:00:00",
    "drill_scratch_dir": "/var/lib/postgresql/restore-drill",
    "drill_port": 5434,
    # How long the drill waits for the canary's WAL to be archived (archive_timeout is 300 s) and for recovery.
    "drill_wait_s": 900,
    # restore.py: which host, into which new cluster, to which target (one of the restore_target_* keys).
    "restore_host": "",
    "restore_cluster": "restore",
    "restore_port": 5433,
    "restore_target_time": "",
    "restore_target_lsn": "",
    "restore_target_xid": "",
    "restore_target_name": "",
    "restore_wait_s": 1800,
    # Restore from another environment's archive (a staging rebuild from prod's backups, docs/backups.md): its
    # prefix, and read-only keys for it (JSON like wal_archive_credentials; empty:
    # <secrets_dir>/s3/restore-source.json). Bucket, region and endpoint default to this environment's archive.
    "restore_source_prefix": "",
    "restore_source_bucket": "",
    "restore_source_region": "",
    "restore_source_endpoint_url": "",
    "restore_source_credentials": "",
}
PROGRAM = "/usr/local/lib/mcp-portal/base_backup.py"
UNIT = "mcp-base-backup"
RETENTION_UNIT = "mcp-backup-retention"
RETENTION_CREDENTIALS = "/etc/mcp-portal/backup-retention.json"
DRILL_PROGRAM = "/usr/local/lib/mcp-portal/restore_drill.py"
DRILL_UNIT = "mcp-restore-drill"
SOURCE_CONFIG = "/etc/mcp-portal/restore-source.json"
SOURCE_CREDENTIALS = "/etc/mcp-portal/restore-source-credentials.json"
TARGETS = ("time", "lsn", "xid", "name")


def _retention_credentials():
    return secrets.keys_file("backup_retention_credentials", "s3", "backup-retention.json")


def drill_host():
    names = [h.name for h in inventory.get_group("replicas", []) + inventory.get_group("primary", [])]
    chosen = host.data.drill_host or names[0]
    if chosen not in names:
        raise DeployError(f"{host.name}: {source_of('drill_host')}: drill_host = {chosen!r} is not a database host "
                          f"of the inventory ({', '.join(names)})")
    return chosen


@deploy("Base backups", data_defaults=DEFAULTS)
def base_backups():
    days = host.data.backup_retention_days
    if not isinstance(days, (int, float)) or days <= 0:
        raise DeployError(f"{host.name}: {source_of('backup_retention_days')}: backup_retention_days = {days!r}; "
                          "set the recovery window in days (> 0)")
    if not _retention_credentials().is_file():
        raise DeployError(f"{host.name}: the retention's S3 credentials file {_retention_credentials()} is missing; "
                          "put the retention user's keys there (docs/backups.md) or set backup_retention_credentials")
    files.put(name="The retention's S3 credentials (may delete; root only)", src=str(_retention_credentials()),
              dest=RETENTION_CREDENTIALS, mode="600")
    for name, src, dest in (("The base backup program", "hostside/base_backup.py", PROGRAM),
                            ("The restore drill", "hostside/restore_drill.py", DRILL_PROGRAM)):
        files.put(name=name, src=src, dest=dest, mode="755", create_remote_dir=True)
    units = [
        files.template(name="Base backup service", src="templates/base-backup.service.j2",
                       dest=f"/etc/systemd/system/{UNIT}.service", mode="644", program=PROGRAM,
                       work_dir=host.data.backup_work_dir, timeout_s=host.data.backup_timeout_s),
        files.template(name="Base backup timer", src="templates/base-backup.timer.j2",
                       dest=f"/etc/systemd/system/{UNIT}.timer", mode="644", schedule=host.data.backup_schedule),
        files.template(name="Retention service", src="templates/backup-retention.service.j2",
                       dest=f"/etc/systemd/system/{RETENTION_UNIT}.service", mode="644", program=PROGRAM,
                       window_days=days, credentials=RETENTION_CREDENTIALS),
        files.template(name="Retention timer", src="templates/backup-retention.timer.j2",
                       dest=f"/etc/systemd/system/{RETENTION_UNIT}.timer", mode="644",
                       schedule=host.data.backup_retention_schedule),
        files.template(name="Restore drill service", src="templates/restore-drill.service.j2",
                       dest=f"/etc/systemd/system/{DRILL_UNIT}.service", mode="644", program=DRILL_PROGRAM,
                       scratch=host.data.drill_scratch_dir, port=host.data.drill_port, wait_s=host.data.drill_wait_s,
                       timeout_s=host.data.backup_timeout_s),
        files.template(name="Restore drill timer", src="templates/restore-drill.timer.j2",
                       dest=f"/etc/systemd/system/{DRILL_UNIT}.timer", mode="644", schedule=host.data.drill_schedule),
        files.template(name="Failure recorder for scheduled units", src="templates/unit-failed@.service.j2",
                       dest="/etc/systemd/system/mcp-unit-failed@.service", mode="644"),
        files.template(name="Failure record clearer for scheduled units", src="templates/unit-recovered@.service.j2",
                       dest="/etc/systemd/system/mcp-unit-recovered@.service", mode="644"),
    ]
    if any(op.will_change for op in units):
        systemd.daemon_reload(name="Reload systemd units")
    systemd.service(name="Base backup timer runs and starts at boot", service=f"{UNIT}.timer", running=True,
                    enabled=True, restarted=units[1].will_change)
    systemd.service(name="Retention timer runs and starts at boot", service=f"{RETENTION_UNIT}.timer", running=True,
                    enabled=True, restarted=units[3].will_change)
    drills = host.name == drill_host()
    systemd.service(name="Restore drill timer runs on the drill host only",
                    service=f"{DRILL_UNIT}.timer", running=drills, enabled=drills, restarted=drills and units[5].will_change)


def _restore_source():
    """When restore_source_prefix names another environment's archive: its configuration and read-only keys on
    the restore host (so the keys never sit in a command line), and True."""
    data = host.data
    if not data.restore_source_prefix:
        return False
    credentials = secrets.keys_file("restore_source_credentials", "s3", "restore-source.json")
    if not credentials.is_file():
        raise DeployError(f"{host.name}: the restore source's S3 credentials file {credentials} is missing; put "
                          "read-only keys for the source archive there (docs/backups.md) or set restore_source_credentials")

    def setting(name):
        return data.get(f"restore_source_{name}") or data.get(f"wal_archive_{name}") or ARCHIVE_DEFAULTS[f"wal_archive_{name}"]
    config = {"bucket": setting("bucket"), "prefix": data.restore_source_prefix, "region": setting("region"),
              "endpoint_url": setting("endpoint_url"), "credentials_file": SOURCE_CREDENTIALS, "claim_prefix": False}
    files.put(name="The restore source's read-only S3 keys", src=str(credentials), dest=SOURCE_CREDENTIALS,
              user="postgres", group="postgres", mode="600")
    files.put(name="The restore source's archive", dest=SOURCE_CONFIG, mode="644",
              src=io.StringIO(json.dumps(config, indent=1, sort_keys=True) + "\n"))
    return True


@deploy("Point-in-time restore", data_defaults=DEFAULTS)
def restore():
    """On restore_host: a new cluster restored from the newest verified backup before the target, replayed from
    the archive to the target and promoted, with archiving off. Never touches an existing cluster."""
    major, cluster = host.data.postgres_major, host.data.restore_cluster
    targets = {t: host.data.get(f"restore_target_{t}") for t in TARGETS if host.data.get(f"restore_target_{t}")}
    if len(targets) > 1:
        raise DeployError(f"{host.name}: {source_of('restore_target_time')}: set one restore_target_* key, not "
                          f"{', '.join('restore_target_' + t for t in targets)}")
    if f"{major}/{cluster}" in host.get_fact(PostgresClusters):
        raise DeployError(f"{host.name}: cluster {major}/{cluster} exists; restore into a new cluster "
                          f"(restore_cluster) or drop it first: pg_dropcluster --stop {major} {cluster}")
    datadir = f"/var/lib/postgresql/{major}/{cluster}"
    # The restored cluster's restore_command keeps reading the same archive as the restore (base_backup.py).
    source = f"MCP_WAL_ARCHIVE_CONFIG={SOURCE_CONFIG} " if _restore_source() else ""
    flags = " ".join(f"--target-{t} '{v}'" for t, v in targets.items())
    wait = (f"for i in $(seq {host.data.restore_wait_s}); do [ \"$(runuser -u postgres -- psql -p {host.data.restore_port} "
            "-XtAc 'select pg_is_in_recovery()' 2>/dev/null)\" = f ] && break; sleep 1; done; "
            f"[ \"$(runuser -u postgres -- psql -p {host.data.restore_port} -XtAc 'select pg_is_in_recovery()')\" = f ] || "
            f"{{ echo 'recovery has not finished within {host.data.restore_wait_s}s: see "
            f"/var/log/postgresql/postgresql-{major}-{cluster}.log' >&2; exit 1; }}")
    server.shell(
        name=f"Restore into cluster {major}/{cluster} (port {host.data.restore_port}) to "
             + (", ".join(f"{t} {v}" for t, v in targets.items()) or "the end of the archive"),
        commands=[
            f"systemctl is-active -q {ARCHIVE_UNIT}.service",  # the archiver's configuration is on this host
            # Whatever sits in the directory is not this run's to remove on failure: refuse before touching it.
            f"[ ! -e {datadir} ] || [ -z \"$(ls -A {datadir})\" ] || {{ echo '{datadir} exists and is not empty: "
            f"move it away; the restore neither writes into it nor removes it' >&2; exit 1; }}",
            # A failure before the cluster starts removes what this run made (the cluster did not exist before).
            f"{{ runuser -u postgres -- env {source}{PROGRAM} restore {datadir} {flags} && pg_createcluster {major} {cluster} "
            f"-d {datadir} -p {host.data.restore_port} --start-conf=manual; }} || {{ rc=$?; "
            f"rm -rf {datadir} /etc/postgresql/{major}/{cluster}; exit $rc; }}",
            f"systemctl start postgresql@{major}-{cluster} || {{ echo 'the restored cluster did not start: see "
            f"/var/log/postgresql/postgresql-{major}-{cluster}.log; drop it with pg_dropcluster --stop {major} {cluster}' >&2; exit 1; }}",
            wait,
        ],
    )
