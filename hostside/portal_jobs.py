#!/usr/bin/python3
"""The portal's scheduled jobs (mcp-audit-partitions.service, mcp-dashboard-refresh.service), run as postgres
in the portal's database as portal_maintenance. A cluster in recovery, or not running, has nothing to do: the units
are on every database host so that they follow a failover.

    portal_jobs.py audit-partitions --cluster 17/main --database portal --ahead 3 --min-ahead 2
    portal_jobs.py dashboard-refresh --cluster 17/main --database portal

audit-partitions makes month partitions `ahead` months past the current one, archives months past retention
(portal.archive_audit_partitions), and writes the horizon as a node-exporter textfile metric; fewer than
`min-ahead` months ahead afterwards fails the run (the unit's OnFailure records it).
"""

import argparse
import os
import subprocess
import sys
import time

from hostside import textfile

ROLE = "portal_maintenance"
# Maintenance DDL takes brief exclusive locks: give up rather than queue the portal's queries behind them.
LOCK_TIMEOUT = "10s"


class JobError(Exception):
    pass


def psql(args, sql):
    env = {**os.environ, "PGOPTIONS": f"-c role={ROLE} -c lock_timeout={LOCK_TIMEOUT}"}
    done = subprocess.run(["psql", "--cluster", args.cluster, "-d", args.database, "-XAtq", "-v", "ON_ERROR_STOP=1",
                           "-c", sql], capture_output=True, text=True, env=env)
    if done.returncode:
        raise JobError(done.stderr.strip() or f"psql exited {done.returncode}")
    return done.stdout.strip()


def audit_partitions(args):
    made = int(psql(args, f"select portal.ensure_audit_partitions({args.ahead})"))
    moved = int(psql(args, "select portal.archive_audit_partitions()"))
    horizon = int(psql(args, "select portal.audit_partition_horizon()"))
    textfile.write("audit_partitions", [
        ("mcp_portal_audit_partitions_ahead_months", "Whole months of audit partitions after the current one.",
         horizon),
        ("mcp_portal_audit_partitions_min_ahead_months", "Fewer months ahead fails the job (audit_partitions_min_ahead).",
         args.min_ahead),
        ("mcp_portal_audit_partitions_run_timestamp_seconds", "When the partition job last ran to its end.",
         time.time()),
    ])
    print(f"audit partitions: {made} made, {moved} archived or dropped, {horizon} months ahead")
    if horizon < args.min_ahead:
        raise JobError(f"only {horizon} months of audit partitions ahead (want {args.min_ahead}): "
                       "see the errors above, or the default partition holding rows of a month to be made")


def dashboard_refresh(args):
    started = time.monotonic()
    psql(args, "refresh materialized view concurrently portal.mv_user_dashboard")
    print(f"dashboard refreshed in {time.monotonic() - started:.1f} s")


JOBS = {"audit-partitions": audit_partitions, "dashboard-refresh": dashboard_refresh}


def main(argv):
    parser = argparse.ArgumentParser(prog="mcp-portal-jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", choices=sorted(JOBS))
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--ahead", type=int, default=3)
    parser.add_argument("--min-ahead", type=int, default=2)
    args = parser.parse_args(argv[1:])
    try:
        elsewhere = not_leading_here(args)
        if elsewhere:
            print(f"{args.job}: {elsewhere}; nothing to do")
            return 0
        JOBS[args.job](args)
    except JobError as exc:
        # Patroni stopped or demoted this member while the job ran: the leader, elsewhere, runs it next time.
        elsewhere = not_leading_here(args)
        if elsewhere:
            print(f"{args.job}: interrupted ({str(exc).splitlines()[0]}): {elsewhere} now; nothing to do")
            return 0
        print(f"{args.job}: {exc}", file=sys.stderr)
        return 1
    return 0


def not_leading_here(args):
    """Why the job has nothing to do on this host, or None when its cluster runs as the primary."""
    if subprocess.run(["pg_isready", "--cluster", args.cluster, "-q"]).returncode != 0:
        # Stopped, starting or being rebuilt: the primary is elsewhere (or down, which monitoring reports as such).
        return "the cluster is not accepting connections here"
    try:
        if psql(args, "select pg_is_in_recovery()") == "t":
            return "the cluster is in recovery (a standby)"
    except JobError:
        return "the cluster is not answering here"
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv))
