#!/usr/bin/python3
"""The restore drill (mcp-restore-drill.service): proves the newest backup and the WAL archive restore.

    restore_drill.py --scratch DIR --port PORT [--wait-s N]

1. The canary: the newest heartbeat row this host can read (heartbeat.beat; a replica reads it from the
   primary's stream), and the LSN it was written at. The drill waits until the archive holds that LSN's segment.
2. The newest verified backup restored into DIR (pg_verifybackup before it becomes a data directory), WAL
   replayed from the archive to its end, the copy promoted; archiving stays off in it.
3. Checks: replay reached the backup's end LSN; the canary row is there; pg_amcheck --heapallindexed on every
   database finds nothing.
4. The result, as JSON, in /var/lib/mcp-portal/drill/last.json (monitoring reads it); the copy is removed
   whatever happened. Any failed check: exit 1 (the unit's OnFailure records it).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from hostside import base_backup, layout, textfile, wal_archive

RESULT = f"{layout.STATE_DIR}/drill/last.json"
CANARY_SQL = ("select writer || '|' || extract(epoch from beat_at) || '|' || written_lsn from heartbeat.beat "
              "order by beat_at desc limit 1")


def canary(archive, wait_s):
    """(writer, beat_at epoch, lsn) of the newest heartbeat, once its WAL segment is in the archive."""
    row = base_backup.psql_db("portal", CANARY_SQL)
    if not row:
        raise wal_archive.ArchiveError("no heartbeat row to use as the canary: is mcp-heartbeat.timer running?")
    writer, beat_at, lsn = row.split("|")
    # The timeline the canary was written on: a standby's received one (pg_control_checkpoint() lags a promotion
    # until the standby's next restartpoint, and the drill would wait for a segment name that never comes).
    timeline = int(base_backup.psql_db("postgres", f"select {wal_archive.CURRENT_TIMELINE_SQL}"))
    segment = f"{timeline:08X}{base_backup.segment_number(lsn):016X}"
    deadline = time.monotonic() + wait_s
    while archive._head(archive.key(segment)) is None:
        if time.monotonic() > deadline:
            raise wal_archive.ArchiveError(f"the canary's segment {segment} is not in the archive after {wait_s}s")
        time.sleep(2)
    return writer, float(beat_at), lsn


def drill(config, scratch, port, wait_s):
    backups, started = base_backup.Backups(config), time.time()
    result = {"started_at": started, "ok": False}
    datadir = os.path.join(scratch, "data")
    try:
        writer, beat_at, lsn = canary(backups.archive, wait_s)
        result["canary"] = {"writer": writer, "beat_at": beat_at, "lsn": lsn}
        shutil.rmtree(scratch, ignore_errors=True)
        os.makedirs(scratch, mode=0o700)
        record = backups.restore(datadir, {})
        result["backup"] = record["id"]
        base_backup.say(f"drill: starting the restored copy on port {port}")
        subprocess.run([f"{backups.bin}/pg_ctl", "-D", datadir, "-w", "-t", str(wait_s), "-l",
                        os.path.join(scratch, "log"), "-o", f"-p {port} -k {scratch}", "start"], check=True)
        query = lambda db, sql: subprocess.run(  # noqa: E731
            ["psql", "-XtAq", "-h", scratch, "-p", str(port), "-d", db, "-c", sql], check=True, capture_output=True,
            text=True).stdout.strip()
        deadline = time.monotonic() + wait_s
        while query("postgres", "select pg_is_in_recovery()") == "t":
            if time.monotonic() > deadline:
                raise wal_archive.ArchiveError(f"the restored copy is still recovering after {wait_s}s")
            time.sleep(1)
        reached = query("postgres", "select pg_current_wal_lsn()")
        checks = result["checks"] = {
            "replay_reached_backup_end": base_backup.lsn_value(reached) >= base_backup.lsn_value(record["end_lsn"]),
            "canary_present": query("portal", f"select count(*) from heartbeat.beat where writer = '{writer}' "
                                              f"and extract(epoch from beat_at) >= {beat_at}") == "1",
        }
        amcheck = subprocess.run([f"{backups.bin}/pg_amcheck", "-h", scratch, "-p", str(port), "--all", "--heapallindexed",
                                  "--install-missing"], capture_output=True, text=True)
        checks["amcheck_clean"] = amcheck.returncode == 0
        if amcheck.returncode:
            base_backup.say(f"drill: pg_amcheck: {amcheck.stdout[-2000:]}{amcheck.stderr[-2000:]}")
        result["ok"] = all(checks.values())
    except (wal_archive.ArchiveError, subprocess.CalledProcessError) as exc:
        result["error"] = str(exc)
    except Exception as exc:  # recorded like any failed check: the drill's verdict must always be written
        result["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if os.path.exists(os.path.join(datadir, "postmaster.pid")):
            subprocess.run([f"{backups.bin}/pg_ctl", "-D", datadir, "-m", "immediate", "stop"])
        shutil.rmtree(scratch, ignore_errors=True)
        result["duration_s"] = round(time.time() - started, 1)
        os.makedirs(os.path.dirname(RESULT), exist_ok=True)
        with open(RESULT + ".new", "w") as f:
            json.dump(result, f, indent=1)
        os.rename(RESULT + ".new", RESULT)
        record_drill(result)
    base_backup.say(f"drill: {'passed' if result['ok'] else 'FAILED'}: {json.dumps(result, sort_keys=True)}")
    return result["ok"]


def record_drill(result):
    textfile.write("restore_drill", [
        ("mcp_restore_drill_last_run_timestamp_seconds", "When the restore drill last finished.",
         result["started_at"] + result["duration_s"]),
        ("mcp_restore_drill_success", "1 when the last restore drill passed every check.", int(result["ok"])),
        ("mcp_restore_drill_duration_seconds", "How long the last restore drill took.", result["duration_s"]),
    ])
    if result["ok"]:
        textfile.write("restore_drill_success", [
            ("mcp_restore_drill_last_success_timestamp_seconds", "When a restore drill last passed.",
             result["started_at"] + result["duration_s"])])


def main(argv):
    parser = argparse.ArgumentParser(prog="mcp-restore-drill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--wait-s", type=int, default=900)
    args = parser.parse_args(argv[1:])
    if base_backup.on_standby("the restore drill"):
        return 0
    config = wal_archive.load_config(os.environ.get("MCP_WAL_ARCHIVE_CONFIG", wal_archive.CONFIG))
    return 0 if drill(config, args.scratch, args.port, args.wait_s) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
