"""The portal's schema: sql/ is a sqitch project (deploy/revert/verify per change, sqitch.plan), shipped to the
primary and deployed there by Debian's sqitch as portal_owner, each change verified as it lands.

What is pending is decided at plan time from sqitch's registry (a fact), so a converged primary runs nothing
and `--dry` lists the changes that will land. A deployed change whose script was edited afterwards is refused
before any host is touched: it would never run again, so the edit would silently not exist in the database.
Each transactional change runs with schema_lock_timeout: behind a long transaction it fails (and sqitch reverts
what this run deployed) instead of queueing every later query behind its lock; re-run the deploy to retry.
docs/schema.md.
"""

import hashlib
from pathlib import Path
from shlex import quote

from pyinfra import host, logger
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import server, systemd

from deploys import ship
from deploys.datasource import source_of
from deploys.facts import SqitchChanges
from deploys.knobs import knobs
from deploys.packages import install
from deploys.postgres import cluster
from hostside import layout
SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
REMOTE_SQL_DIR = "/usr/share/mcp-portal/sql"
PROJECT = "mcp_portal"
# The roles the migrations grant to (the deploy makes them from postgres_roles first).
MIGRATION_ROLES = ("portal_owner", "portal_definer", "portal_app", "portal_admin", "portal_reporting",
                   "portal_maintenance", "monitoring")
JOBS_PROGRAM = layout.program("portal-jobs")
JOBS = {"mcp-audit-partitions": "audit_partitions_schedule", "mcp-dashboard-refresh": "dashboard_refresh_schedule"}


def plan_changes(sql_dir=SQL_DIR):
    """The change names of sqitch.plan, in order."""
    changes = []
    for line in (sql_dir / "sqitch.plan").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("%", "#", "@")):
            changes.append(line.split()[0])
    return changes


def script_hash(path):
    """What sqitch records as a change's script_hash: the SHA-1 of its deploy script."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def pending_changes(deployed, sql_dir=SQL_DIR):
    """The plan's changes not deployed yet, in order; ValueError when the database and sql/ disagree."""
    planned = plan_changes(sql_dir)
    for change in planned:
        missing = [kind for kind in ("deploy", "revert", "verify") if not (sql_dir / kind / f"{change}.sql").is_file()]
        if missing:
            raise ValueError(f"sql/sqitch.plan: change {change} has no {', '.join(f'{k}/{change}.sql' for k in missing)}")
    if list(deployed) != planned[:len(deployed)]:
        raise ValueError(f"the database's deployed changes ({', '.join(deployed) or 'none'}) are not the start of "
                         f"sql/sqitch.plan; restore the plan, or revert with sqitch first (docs/schema.md)")
    for change, deployed_hash in deployed.items():
        if script_hash(sql_dir / "deploy" / f"{change}.sql") != deployed_hash:
            raise ValueError(f"sql/deploy/{change}.sql was edited after it was deployed; add a new change "
                             f"(or `sqitch rework {change}`) instead of editing a deployed one")
    return planned[len(deployed):]


def roles_problem(roles):
    """Why postgres_roles cannot carry the migrations' grants, or None."""
    missing = [name for name in MIGRATION_ROLES if name not in roles]
    if missing:
        return f"postgres_roles lacks {', '.join(missing)}, which the migrations grant to; keep them (deploys/roles.py)"
    if roles["portal_app"].bypassrls or roles["portal_app"].member_of:
        return "postgres_roles.portal_app must have neither bypassrls nor member_of: row-level security binds the app"
    if not roles["portal_definer"].bypassrls or roles["portal_definer"].login:
        return "postgres_roles.portal_definer must be bypassrls and not login: it owns the policies' helper functions"
    if "portal_definer" not in roles["portal_owner"].member_of:
        return "postgres_roles.portal_owner must be member_of portal_definer, to hand it the functions it owns"
    return None


def sqitch_command(cluster, owner, lock_timeout, database, action):
    """Shell: sqitch `action` on `database` with the shipped sql/, as the schema's owner, with the lock timeout."""
    options = quote(f"-c role={owner} -c lock_timeout={lock_timeout.replace(' ', '')}")
    return (f"cd {REMOTE_SQL_DIR} && runuser -u postgres -- env PGCLUSTER={cluster} PGOPTIONS={options} "
            f"SQITCH_FULLNAME='mcp-portal deploy' SQITCH_EMAIL=deploy@mcp-portal.invalid sqitch {action} "
            f"{quote('db:pg:' + database)}")


@deploy("Portal schema")
def migrations(leading):
    """On every database host (any may lead after a failover): sqitch and sql/; on the leader, sqitch deploys what
    is pending as portal_owner."""
    k, pg = knobs(), cluster()
    problem = roles_problem(k.postgres_roles)
    if problem:
        raise DeployError(f"{host.name}: {source_of('postgres_roles')}: {problem}")
    install("Install sqitch", packages=["sqitch", "libdbd-pg-perl"], no_recommends=True)
    ship.tree("Ship the migrations (sql/)", SQL_DIR, REMOTE_SQL_DIR)
    if not leading:
        return
    deployed = host.get_fact(SqitchChanges, major=pg.major, cluster=pg.name, database=k.portal_database, project=PROJECT)
    try:
        pending = pending_changes(deployed)
    except ValueError as exc:
        raise DeployError(f"{host.name}: {exc}") from None
    if not pending:
        logger.info(f"[{host.name}] Portal schema: all {len(deployed)} changes of sql/sqitch.plan are deployed")
        return
    server.shell(name=f"Deploy {len(pending)} migration(s): {', '.join(pending)}",
                 commands=[sqitch_command(pg.label, k.portal_database_owner, k.schema_lock_timeout, k.portal_database,
                                          "deploy --verify")])


@deploy("Portal jobs")
def portal_jobs():
    """On every database host (a job acts only where the cluster is not in recovery, so it follows a failover):
    audit partitions made ahead and archived, and the dashboard refreshed, each on its timer."""
    k, pg = knobs(), cluster()
    timers = {}
    changed = False
    for unit, schedule_key in JOBS.items():
        job = unit.removeprefix("mcp-")
        service = ship.template(
            f"{job} service", "templates/portal-job.service.j2", f"/etc/systemd/system/{unit}.service",
            "644", program=JOBS_PROGRAM, job=job, database=k.portal_database, ahead=k.audit_partitions_ahead,
            min_ahead=k.audit_partitions_min_ahead, cluster=pg.label)
        timers[unit] = ship.template(
            f"{job} timer", "templates/portal-job.timer.j2", f"/etc/systemd/system/{unit}.timer",
            "644", job=job, schedule=getattr(k, schedule_key))
        changed = changed or service.will_change or timers[unit].will_change
    if changed:
        systemd.daemon_reload(name="Reload systemd units")
    for unit, timer in timers.items():
        systemd.service(name=f"{unit}.timer runs and starts at boot", service=f"{unit}.timer", running=True,
                        enabled=True, restarted=timer.will_change)
