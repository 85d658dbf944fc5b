"""Planned switchover through Patroni while PgBouncer holds the clients: they see a pause, not errors.

Refused first, with nothing changed, for a target that is not a running, streaming replica within its lag threshold,
or while a base backup, restore drill or point-in-time restore runs. Then PgBouncer's read-write entry is paused on
every PgBouncer host (transactions in flight finish, new ones wait), Patroni hands leadership over (the old leader
shuts down cleanly, the target replays all of it and is promoted, the old leader follows it), each HAProxy is told
at once which member leads (its checks confirm it moments later), each PgBouncer's read-write entry is seen pointing
at it (mcp-follow-leader moves it from what HAProxy sees), and PgBouncer resumes. Whatever happens after the pause,
PgBouncer is resumed.
"""

import time

from deploys.knobs import knobs
from deploys.replication import lag_threshold_mb
from deploys.routing import member_endpoint
from ha.tier import Refused, say
from hostside import layout

PAUSE_TIMEOUT_S = 30  # for PgBouncer to see the transactions in flight finish
PROMOTED_WAIT_S = 60  # for the new leader's PostgreSQL to end recovery
FOLLOWED_WAIT_S = 10  # for every PgBouncer's read-write entry to point at the new leader (it takes tenths of a second)
IN_RECOVERY = "runuser -u postgres -- psql -h {socket} -p {port} -XtAc 'select pg_is_in_recovery()' 2>/dev/null"
# What may not run during a switchover, on any database host: each would fail or copy a half-switched tier.
BUSY = ("busy=''; "
        "systemctl is-active -q mcp-base-backup.service && busy=\"$busy base backup,\"; "
        "systemctl is-active -q mcp-restore-drill.service && busy=\"$busy restore drill,\"; "
        "pgrep -f '[m]cp-base-backup restore' >/dev/null && busy=\"$busy point-in-time restore,\"; "
        "echo \"$busy\"")


def preflight(tier, target):
    """The current leader; Refused, naming the reason, for anything that would make the switchover unsafe."""
    if target not in tier.database_hosts:
        raise Refused(f"{target} is not one of the inventory's database hosts ({', '.join(tier.database_hosts)})")
    for name in tier.database_hosts + tier.group("pgbouncer"):
        if not tier.reachable(name):
            raise Refused(f"{name} is unreachable over ssh: a switchover needs every host (a lost leader is Patroni's "
                          "to replace)")
    members = tier.members()
    leaders = [name for name, m in members.items() if m["role"] == "leader"]
    if not leaders:
        raise Refused("the cluster has no leader now (Patroni is electing one): see mcp-ha status")
    leader, state = leaders[0], members.get(target)
    if target == leader:
        raise Refused(f"{target} already leads")
    if not state or state["role"] == "leader" or state["state"] != "streaming":
        raise Refused(f"{target} is not a streaming replica of {leader} (Patroni says: "
                      f"{state['state'] if state else 'not a member'})")
    threshold = lag_threshold_mb(target, knobs(tier.hosts[target]))
    lag = state.get("lag", 0)
    if not isinstance(lag, int) or lag > threshold * 2**20:
        raise Refused(f"{target} is {lag if not isinstance(lag, int) else f'{lag / 2**20:.1f} MB'} behind {leader}, over "
                      f"its lag threshold ({threshold} MB); wait for it to catch up or pick another replica")
    for name in tier.database_hosts:
        busy = tier.run(name, BUSY)[1].strip(" ,")
        if busy:
            raise Refused(f"{name} is running a {busy}; wait for it to finish")
    return leader


def _pooled_entries(tier, pooler):
    return [tier.data(pooler, "pgbouncer_rw_entry"), tier.data(pooler, "pgbouncer_auth_database")]


def pause(tier):
    for pooler in tier.group("pgbouncer"):
        for entry in _pooled_entries(tier, pooler):
            tier.pgbouncer(pooler, f"PAUSE {entry}", timeout=PAUSE_TIMEOUT_S)


def resume(tier):
    """RESUME every paused entry; never raises (a pooler left paused is said, not hidden)."""
    for pooler in tier.group("pgbouncer"):
        for entry in _pooled_entries(tier, pooler):
            try:
                tier.pgbouncer(pooler, f"RESUME {entry}")
            except Refused as exc:
                if "is not paused" not in str(exc):
                    say(f"could not resume {entry} on {pooler}: {exc}; run RESUME {entry} on its admin console")


def route_to(tier, leader):
    """Tell each HAProxy now which member leads (its own checks would take up to fall x inter to see it)."""
    # One line of commands, the new leader's first: mcp-follow-leader never reads a moment with no leader up.
    others = [m for m in tier.database_hosts if m != leader]
    command = "; ".join([f"set server primary/{leader} health up"] + [f"set server primary/{m} health down" for m in others])
    for pooler in tier.group("pgbouncer"):
        tier.haproxy(pooler, command)


def wait_followed(tier, leader):
    """Until every PgBouncer's read-write entry connects to `leader` (its SHOW DATABASES), at most FOLLOWED_WAIT_S;
    a PgBouncer still elsewhere then is said, and the caller resumes anyway (a pause is not left behind)."""
    address = member_endpoint(tier.hosts[leader])[0]
    deadline = time.monotonic() + FOLLOWED_WAIT_S
    for pooler in tier.group("pgbouncer"):
        entry = tier.data(pooler, "pgbouncer_rw_entry")
        while tier.pgbouncer_databases(pooler)[entry][0] != address:
            if time.monotonic() > deadline:
                say(f"{pooler}: PgBouncer's {entry} does not point at {leader} after {FOLLOWED_WAIT_S} s; resuming "
                    "anyway: see journalctl -u mcp-follow-leader there")
                break
            time.sleep(0.1)


def switchover(tier, target):
    old = preflight(tier, target)
    say(f"switchover {old} -> {target}: pausing PgBouncer")
    started = time.monotonic()
    try:
        pause(tier)
    except Refused as exc:
        resume(tier)
        raise Refused(f"{exc}: a transaction in flight did not finish; switchover abandoned before any change, "
                      "PgBouncer resumed") from None
    try:
        say(f"Patroni hands leadership from {old} to {target}")
        tier.cluster(old, f"switchover --leader {old} --candidate {target}")
        # Patroni answers once the target holds the lock; its PostgreSQL may still be ending recovery, and a write
        # sent to it then would fail (read-only): wait until it takes writes.
        in_recovery = IN_RECOVERY.format(socket=layout.SOCKET_DIR, port=int(tier.data(target, "postgres_port")))
        ok, _ = tier.run(target, f"for i in $(seq {PROMOTED_WAIT_S * 5}); do [ \"$({in_recovery})\" = f ] && exit 0; "
                                 "sleep 0.2; done; exit 1", timeout=PROMOTED_WAIT_S + 10, check=False)
        if not ok:
            raise Refused(f"{target} holds the leader lock but its PostgreSQL takes no writes after {PROMOTED_WAIT_S} s; "
                          "PgBouncer is resumed: see mcp-ha status and its log")
        route_to(tier, target)
        wait_followed(tier, target)
    finally:
        resume(tier)
    say(f"switchover done: {target} leads; clients were held {time.monotonic() - started:.1f} s")
