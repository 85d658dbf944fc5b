"""Base backups, retention and the restore drill on timers on every database host, each acting where Patroni's leader
is (a standby's run says so and does nothing), and point-in-time restores from the backups (restore.py).
hostside/base_backup.py does the work on the host; docs/backups.md."""

import json
import time
from shlex import quote

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FileContents
from pyinfra.operations import files, server, systemd

from deploys import secrets, ship
from deploys.archive import CONFIG as ARCHIVE_CONFIG, UNIT as ARCHIVE_UNIT, archive_generation, archive_prefix
from deploys.facts import NewestBackup, PostgresClusters
from deploys.knobs import knobs
from hostside import layout

PROGRAM = layout.program("base-backup")
UNIT = "mcp-base-backup"
RETENTION_UNIT = "mcp-backup-retention"
RETENTION_CREDENTIALS = layout.config("backup-retention.json")
DRILL_PROGRAM = layout.program("restore-drill")
DRILL_UNIT = "mcp-restore-drill"
SOURCE_CONFIG = layout.config("restore-source.json")
SOURCE_CREDENTIALS = layout.config("restore-source-credentials.json")
TARGETS = ("time", "lsn", "xid", "name")


def _retention_credentials():
    return secrets.keys_file("backup_retention_credentials", "s3", "backup-retention.json")


@deploy("Base backups")
def base_backups():
    k = knobs()
    if not _retention_credentials().is_file():
        raise DeployError(f"{host.name}: the retention's S3 credentials file {_retention_credentials()} is missing; "
                          "put the retention user's keys there (docs/backups.md) or set backup_retention_credentials")
    secrets.put_private("The retention's S3 credentials (may delete; root only)", _retention_credentials().read_text(),
                        RETENTION_CREDENTIALS)
    files.directory(name="Failure records of scheduled units (written as postgres)", path=layout.FAILURES_DIR,
                    user="postgres", group="postgres", mode="755")
    units = [
        ship.template("Base backup service", "templates/base-backup.service.j2",
                      f"/etc/systemd/system/{UNIT}.service", "644", program=PROGRAM,
                      work_dir=k.backup_work_dir, timeout_s=k.backup_timeout_s,
                      full_every_days=k.backup_full_every_days),
        ship.template("Base backup timer", "templates/base-backup.timer.j2",
                      f"/etc/systemd/system/{UNIT}.timer", "644", schedule=k.backup_schedule),
        ship.template("Retention service", "templates/backup-retention.service.j2",
                      f"/etc/systemd/system/{RETENTION_UNIT}.service", "644", program=PROGRAM,
                      window_days=k.backup_retention_days, credentials=RETENTION_CREDENTIALS,
                      max_delete_percent=k.backup_retention_max_delete_percent),
        ship.template("Retention timer", "templates/backup-retention.timer.j2",
                      f"/etc/systemd/system/{RETENTION_UNIT}.timer", "644",
                      schedule=k.backup_retention_schedule),
        ship.template("Restore drill service", "templates/restore-drill.service.j2",
                      f"/etc/systemd/system/{DRILL_UNIT}.service", "644", program=DRILL_PROGRAM,
                      scratch=k.drill_scratch_dir, port=k.drill_port, wait_s=k.drill_wait_s,
                      timeout_s=k.backup_timeout_s),
        ship.template("Restore drill timer", "templates/restore-drill.timer.j2",
                      f"/etc/systemd/system/{DRILL_UNIT}.timer", "644", schedule=k.drill_schedule),
        ship.template("Failure recorder for scheduled units", "templates/unit-failed@.service.j2",
                      "/etc/systemd/system/mcp-unit-failed@.service", "644", failures=layout.FAILURES_DIR,
                      metrics=layout.METRICS_DIR),
        ship.template("Failure record clearer for scheduled units", "templates/unit-recovered@.service.j2",
                      "/etc/systemd/system/mcp-unit-recovered@.service", "644", failures=layout.FAILURES_DIR,
                      metrics=layout.METRICS_DIR),
    ]
    if any(op.will_change for op in units):
        systemd.daemon_reload(name="Reload systemd units")
    systemd.service(name="Base backup timer runs and starts at boot", service=f"{UNIT}.timer", running=True,
                    enabled=True, restarted=units[1].will_change)
    systemd.service(name="Retention timer runs and starts at boot", service=f"{RETENTION_UNIT}.timer", running=True,
                    enabled=True, restarted=units[3].will_change)
    systemd.service(name="Restore drill timer runs and starts at boot", service=f"{DRILL_UNIT}.timer", running=True,
                    enabled=True, restarted=units[5].will_change)


@deploy("A recent verified base backup")
def recent_backup():
    """On the leader, once the tier runs: a base backup now (the timer's unit, verified, recorded) when no trusted
    backup in the archive is newer than backup_max_age_h: a first deploy has point-in-time recovery from its first
    minute, not from the timer's first run, and a deploy after backups stopped restores the window's start."""
    k = knobs()
    # The host lists the archive its configuration names: a new prefix (a staging rebuild's) holds no backup yet.
    listed = host.get_fact(FileContents, path=ARCHIVE_CONFIG)
    new_prefix = not listed or json.loads("\n".join(listed)).get("prefix") != archive_prefix(archive_generation())
    newest = None if new_prefix else host.get_fact(NewestBackup)
    if newest == NewestBackup.UNREADABLE and not k.wal_archive_preflight:
        # Shipping a change during an S3 outage (docs/backups.md): a backup now would only fail the deploy.
        logger.warning(f"{host.name}: the archive cannot be read and wal_archive_preflight is off: no base backup "
                       "now; the timer takes the next one")
        return
    if newest is None:
        why = "none found in the archive"
    elif newest == NewestBackup.UNREADABLE:
        why = "the archive could not be listed before it"
    elif time.time() - newest < k.backup_max_age_h * 3600:
        return
    else:
        why = f"the newest is {(time.time() - newest) / 3600:.1f} h old"
    server.shell(name=f"Take a verified base backup now ({why}; backup_max_age_h {k.backup_max_age_h:g})",
                 commands=[f"systemctl start {UNIT}.service"])


def _restore_source(pg):
    """When restore_source_prefix names another environment's archive: its configuration and read-only keys on
    the restore host (so the keys never sit in a command line), and True."""
    k = knobs()
    if not k.restore_source_prefix:
        return False
    credentials = secrets.keys_file("restore_source_credentials", "s3", "restore-source.json")
    if not credentials.is_file():
        raise DeployError(f"{host.name}: the restore source's S3 credentials file {credentials} is missing; put "
                          "read-only keys for the source archive there (docs/backups.md) or set restore_source_credentials")
    config = {"bucket": k.restore_source_bucket or k.wal_archive_bucket, "prefix": k.restore_source_prefix,
              "region": k.restore_source_region or k.wal_archive_region,
              "endpoint_url": k.restore_source_endpoint_url or k.wal_archive_endpoint_url,
              "credentials_file": SOURCE_CREDENTIALS, "claim_prefix": False, "bin_directory": pg.bin_directory,
              "prefetch": k.wal_restore_prefetch}
    secrets.put_private("The restore source's read-only S3 keys", credentials.read_text(), SOURCE_CREDENTIALS,
                        user="postgres", group="postgres")
    ship.file("The restore source's archive", json.dumps(config, indent=1, sort_keys=True) + "\n", SOURCE_CONFIG,
              "644")
    return True


def start_or_give_up(unit, settle_s=3):
    """Shell: start a PostgreSQL cluster's unit; fails when it does not start, never hangs. Debian's unit ignores
    pg_ctlcluster's failure and then waits for the PID file with no time limit: when the server exits while it
    starts (recovery aborted), the start job would wait forever. A unit still activating with neither a start
    process nor a main process for `settle_s` seconds is that case: its job is cancelled (stop), and the start
    fails."""
    state = " ".join(f"$(systemctl show -P {p} {unit})" for p in ("ActiveState", "ControlPID", "MainPID"))
    return (f"{{ systemctl start {unit} & starting=$!; stuck=0; while kill -0 $starting 2>/dev/null; do "
            f"if [ \"{state}\" = 'activating 0 0' ]; then stuck=$((stuck + 1)); else stuck=0; fi; "
            f"if [ $stuck -ge {settle_s} ]; then systemctl stop {unit}; fi; sleep 1; done; wait $starting; }}")


@deploy("Point-in-time restore")
def restore(cluster_name=None, scratch=False):
    """On restore_host: a new cluster (restore_cluster, or `cluster_name`) restored from the newest verified backup before
    the target, replayed from the archive to the target and promoted, with archiving off. Never touches an existing
    cluster, unless `scratch`: then a cluster of that name left by an earlier run is dropped first, and the new one
    listens on no address (only postgres reaches it, through its socket)."""
    k = knobs()
    pg = layout.Cluster(k.postgres_major, cluster_name or k.restore_cluster)
    targets = {t: getattr(k, f"restore_target_{t}") for t in TARGETS if getattr(k, f"restore_target_{t}")}
    if pg.label in host.get_fact(PostgresClusters):
        if not scratch:
            raise DeployError(f"{host.name}: cluster {pg.label} exists; restore into a new cluster "
                              f"(restore_cluster) or drop it first: pg_dropcluster --stop {pg.major} {pg.name}")
        server.shell(name=f"Drop the scratch cluster {pg.label} an earlier run left",
                     commands=[f"pg_dropcluster --stop {pg.major} {pg.name}"])
    datadir, port, wait_s = pg.data_directory, k.restore_port, k.restore_wait_s
    # The restored cluster's restore_command keeps reading the same archive as the restore (base_backup.py).
    source = f"MCP_WAL_ARCHIVE_CONFIG={SOURCE_CONFIG} " if _restore_source(pg) else ""
    flags = " ".join(f"--target-{t} {quote(v)}" for t, v in targets.items())
    # Written as postgres, whose directory it is.
    private = (f" && printf \"listen_addresses = ''\\n\" | runuser -u postgres -- tee {pg.config_directory}/conf.d/"
               "scratch.conf >/dev/null" if scratch else "")
    recovering = f"runuser -u postgres -- psql -p {port} -XtAc 'select pg_is_in_recovery()'"
    # restore_command's last word in the cluster's log: why recovery stopped, when it did.
    why = (f"$(grep -h 'wal_archive fetch' {pg.log_file} | tail -n 1); see {pg.log_file}; drop the cluster with "
           f"pg_dropcluster --stop {pg.major} {pg.name}")
    stopped = f"systemctl is-active -q {pg.unit} || {{ echo \"recovery stopped: {why}\" >&2; exit 1; }}"
    wait = (f"for i in $(seq {wait_s}); do [ \"$({recovering} 2>/dev/null)\" = f ] && break; {stopped}; sleep 1; done; "
            f"[ \"$({recovering})\" = f ] || "
            f"{{ echo 'recovery has not finished within {wait_s}s: see {pg.log_file}' >&2; exit 1; }}")
    server.shell(
        name=f"Restore into cluster {pg.label} (port {port}) to "
             + (", ".join(f"{t} {v}" for t, v in targets.items()) or "the end of the archive"),
        commands=[
            f"systemctl is-active -q {ARCHIVE_UNIT}.service",  # the archiver's configuration is on this host
            # Whatever sits in the directory is not this run's to remove on failure: refuse before touching it.
            f"[ ! -e {datadir} ] || [ -z \"$(ls -A {datadir})\" ] || {{ echo '{datadir} exists and is not empty: "
            f"move it away; the restore neither writes into it nor removes it' >&2; exit 1; }}",
            # A failure before the cluster starts removes what this run made (the cluster did not exist before).
            f"{{ runuser -u postgres -- env {source}{PROGRAM} restore {datadir} {flags} && pg_createcluster {pg.major} "
            f"{pg.name} -d {datadir} -p {port} --start-conf=manual{private}; }} || {{ rc=$?; "
            f"rm -rf {datadir} {pg.config_directory}; exit $rc; }}",
            f"{start_or_give_up(pg.unit)} || {{ echo \"the restored cluster did not start: {why}\" >&2; exit 1; }}",
            wait,
            # Without a target, replay ends where a fetch answers "absent": at the archive's end, or at a gap.
            *([] if targets else [f"runuser -u postgres -- env {source}{PROGRAM} replayed {datadir}"]),
        ],
    )
