#!/usr/bin/python3
"""Fencing: a primary that a promoted replica replaced stops, and never starts again as a primary.

    fence.py watch SECONDS  mcp-fence.service: check every SECONDS, for as long as the host runs
    fence.py check          once: a primary the archive shows replaced (a newer timeline's history file) fences itself
    fence.py stop REASON    fence this cluster now (the switchover stops the old primary this way)
    fence.py may-start      ExecStartPre of postgresql@: a fenced cluster starts only as a standby (standby.signal)

A failover cannot reach a primary that is cut off, so the primary watches for its own replacement: the promotion
writes the new timeline's history file into the WAL archive, and history files are contiguous, so one HEAD request
per check tells. Fencing stops PostgreSQL (fast shutdown: sessions end, nothing more is acknowledged) and leaves a
marker that only a rejoin as a standby removes (docs/failover.md). The archiver's refusal of a superseded timeline
(wal_archive.py) is the last line, not the first. Configuration: /etc/mcp-portal/fence.json, written by the deploy.
"""

import json
import os
import subprocess
import sys
import time

from hostside import layout, textfile, wal_archive

CONFIG = layout.config("fence.json")
MARKER = f"{layout.STATE_DIR}/fenced"
# The current WAL file's name starts with the timeline the primary writes on now; pg_control_checkpoint() would lag
# behind a promotion until the next checkpoint, and a just-promoted primary must not read itself as replaced.
TIMELINE_SQL = "select case when pg_is_in_recovery() then '' else pg_walfile_name(pg_current_wal_insert_lsn()) end"


def primary_timeline(config):
    """The timeline this cluster writes on as a primary; None when it is down, starting, or a standby."""
    try:
        # As postgres without runuser: no PAM session logged every few seconds.
        result = subprocess.run(["psql", "--cluster", config["cluster"], "-XtAc", TIMELINE_SQL], user="postgres",
                                group="postgres", extra_groups=[], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    name = result.stdout.strip()
    return wal_archive.timeline_of(name) if result.returncode == 0 and name else None


def fence(config, reason, marker=MARKER, run=subprocess.run):
    """Mark first (a crash between the two still keeps it from starting as a primary), then stop."""
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker, "w") as out:
        json.dump({"reason": reason, "at": time.time()}, out)
    textfile.write("fence", [("mcp_fenced_timestamp_seconds", "When this host's PostgreSQL was fenced.", time.time())])
    print(f"fence: stopping {config['unit']}: {reason}", file=sys.stderr)
    return run(["systemctl", "stop", config["unit"]]).returncode


def check(config, archive):
    timeline = primary_timeline(config)
    if timeline is not None and archive.superseded(timeline):
        fence(config, f"the WAL archive has timeline {timeline + 1}: a replica was promoted after this primary "
                      f"(timeline {timeline}); rejoin it as a standby (docs/failover.md)")
    textfile.write("fence_check", [("mcp_fence_last_check_timestamp_seconds",
                                    "When the fence last decided (the archive answered, or this host is no primary).",
                                    time.time())])
    return 0


def _code_version():
    return [os.stat(module.__file__).st_mtime_ns for module in (sys.modules[__name__], wal_archive, textfile)]


def watch(config, archive, interval, sleep=time.sleep, checks=None):
    """Check every `interval` seconds in one process (one S3 client, no unit started per check); a check that
    fails (the archive unreachable) is said and the next one tries again. Returns when its code on disk changed
    (a deploy shipped a new version): systemd starts the new one."""
    done, started_with = 0, _code_version()
    while (checks is None or done < checks) and _code_version() == started_with:
        try:
            check(config, archive)
        except Exception as exc:
            print(f"fence check: cannot read the WAL archive: {type(exc).__name__}: {exc}".replace("\n", " "),
                  file=sys.stderr, flush=True)
        done += 1
        sleep(interval)


def may_start(config, marker=MARKER):
    """0 unless fenced and not about to start as a standby; the refusal names the fence's reason."""
    if not os.path.exists(marker) or os.path.exists(os.path.join(config["data_directory"], "standby.signal")):
        return 0
    with open(marker) as f:
        fenced = json.load(f)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(fenced["at"]))
    print(f"fence: {config['unit']} is fenced since {when} ({fenced['reason']}); it may only start as a standby: "
          f"rejoin it (docs/failover.md)", file=sys.stderr)
    return 1


def main(argv):
    command, args = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    if {"watch": 1, "check": 0, "stop": 1, "may-start": 0}.get(command) != len(args):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    with open(os.environ.get("MCP_FENCE_CONFIG", CONFIG)) as f:
        config = json.load(f)
    if command == "may-start":
        return may_start(config)
    if command == "stop":
        return fence(config, args[0])
    archive = wal_archive.Archive(wal_archive.load_config())
    if command == "watch":
        return watch(config, archive, float(args[0]))
    try:
        return check(config, archive)
    except Exception as exc:  # the archive unreachable: nothing decided
        print(f"fence check: cannot read the WAL archive: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
