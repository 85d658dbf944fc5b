"""Unplanned failover: the primary is gone; the most advanced replica takes over.

The lost primary cannot be reached, so it is not stopped here: it fences itself when it regains the network (the
promotion's timeline history in the archive, hostside/fence.py), and rejoins with the ordinary deploy. Here:
PgBouncer holds the clients, the replica that received the most WAL replays all of it and is promoted, gets slots
for every other database host, is recorded in the inventory; PgBouncer and the surviving replicas are re-pointed;
the archive is checked for a gap in the old timeline up to the switch.
"""

import time

from deploys.archive import PROGRAM as ARCHIVER
from deploys.datasource import address_of
from deploys.fencing import PROGRAM as FENCE
from ha.switchover import pause, promote, resume
from ha.tier import Refused, say
from hostside.wal_archive import format_lsn, lsn

REPLAY_S = 60  # for the chosen replica to replay what it received before it is promoted
HISTORY_S = 60  # for the new primary to archive its timeline history (what fences the old primary)


def choose(tier):
    """The surviving standby that received the most WAL (and the standbys, and whether the old primary's host
    answers), after refusing a failover the tier does not need."""
    old = tier.primary
    reachable = tier.reachable(old)
    if reachable:
        state = tier.node(old)
        if state and not state["in_recovery"]:
            raise Refused(f"{old} is up and a primary: nothing to fail over (planned: mcp-ha switchover)")
        if state:
            raise Refused(f"{old}, the inventory's primary, is a standby: the inventory is out of date; find the live "
                          "primary (mcp-ha status) and fix the inventory's record (docs/failover.md)")
    standbys = {}
    for name in tier.group("replicas"):
        state = tier.node(name) if tier.reachable(name) else {}
        if state and state["in_recovery"]:
            standbys[name] = state
            say(f"{name}: received {state['receive_lsn'] or 'nothing by streaming'}, replayed {state['replay_lsn']}")
        else:
            say(f"{name}: unreachable or not a running standby; not a candidate")
    if not standbys:
        raise Refused("no replica is a running standby: nothing to promote; restore from the archive (docs/failover.md)")
    if len({s["system_identifier"] for s in standbys.values()}) > 1:
        raise Refused(f"the standbys belong to different clusters ({', '.join(standbys)}); fix the inventory")
    best = max(standbys, key=lambda n: lsn(standbys[n]["receive_lsn"] or standbys[n]["replay_lsn"]))
    return best, standbys, reachable


def _replay_all(tier, name, received):
    deadline = time.monotonic() + REPLAY_S
    while lsn(tier.psql(name, "select pg_last_wal_replay_lsn()")) < received:
        if time.monotonic() > deadline:
            raise Refused(f"{name} has not replayed up to {format_lsn(received)} within {REPLAY_S} s; nothing changed")
        time.sleep(0.2)


def _seal(tier, primary):
    """The promotion's history is archived (so the old primary can fence itself) and the old timeline has no gap."""
    timeline = int(tier.psql(primary, "select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), 16)
    deadline = time.monotonic() + HISTORY_S
    while True:
        ok, output = tier.run(primary, f"runuser -u postgres -- {ARCHIVER} seal {timeline} 2>&1", check=False)
        if ok or "history is not archived yet" not in output or time.monotonic() > deadline:
            break
        time.sleep(1)
    if not ok:
        raise Refused(f"{primary} is the primary, but the archive is not sealed across the promotion: {output}; "
                      "take a base backup now (systemctl start mcp-base-backup.service) and see docs/failover.md")
    say(f"archive: {output}")


def release_lost(tier, lost):
    """Clients whose transaction was in flight on the lost primary wait on a dead connection until the kernel gives
    up (minutes): end them now, with an error, as the lost primary would have. Everyone else was only held."""
    address = address_of(tier.hosts[lost])
    for pooler in tier.group("pgbouncer"):
        clients = {c["ptr"]: c["id"] for c in tier.pgbouncer_rows(pooler, "SHOW CLIENTS")}
        stuck = [clients[s["link"]] for s in tier.pgbouncer_rows(pooler, "SHOW SERVERS")
                 if s["addr"] == address and s["link"] in clients]
        for client in stuck:
            tier.pgbouncer(pooler, f"KILL_CLIENT {client}")
        if stuck:
            say(f"{pooler}: ended {len(stuck)} client(s) whose transaction was in flight on {lost}")


def failover(tier):
    old = tier.primary
    target, standbys, old_host_up = choose(tier)
    received = lsn(standbys[target]["receive_lsn"] or standbys[target]["replay_lsn"])
    if old_host_up:  # the host answers but its PostgreSQL does not: keep it from starting again as a primary
        tier.run(old, f"{FENCE} stop 'failover to {target}'", check=False)
    say(f"failover {old} -> {target} (received the most WAL: {format_lsn(received)}); pausing PgBouncer")
    started = time.monotonic()
    pause(tier, patient=False)
    try:
        _replay_all(tier, target, received)
    except Refused:
        resume(tier)
        raise
    repointed = promote(tier, target, started)
    release_lost(repointed, old)
    survivors = [n for n in standbys if n != target]
    if survivors:
        say(f"re-pointing {', '.join(survivors)} at {target}")
        repointed.deploy(target, *survivors)
    _seal(repointed, target)
    say(f"done: {target} is the primary. {old} fences itself when it is back; then rejoin it with the deploy "
        f"(docs/failover.md)")
    return repointed
