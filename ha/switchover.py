"""Planned switchover: the primary hands over to a caught-up replica while PgBouncer holds the clients.

Clients see a pause, not errors: PgBouncer's read-write entry is paused (transactions in flight finish, new ones
wait), the old primary is fenced and shut down cleanly (its WAL senders ship everything first), the replica is
promoted once it has replayed the old primary's shutdown checkpoint, the inventory records it, PgBouncer is
re-pointed and resumed. Then the ordinary deploy re-points the other replicas and rejoins the old primary with
pg_rewind. Anything wrong before the promotion puts the old primary back and resumes PgBouncer.
"""

import time

from deploys.fencing import PROGRAM as FENCE
from deploys.knobs import knobs
from deploys.replication import lag_threshold_mb
from ha.tier import Refused, say
from hostside import fence, layout
from hostside.wal_archive import lsn
from inventory._primary import record_primary

CATCH_UP_S = 30  # for the replica to replay the old primary's shutdown checkpoint
PAUSE_TIMEOUT_S = 30  # for PgBouncer to see the transactions in flight finish
LOST_PAUSE_S = 5  # a failover's pause: long enough for PgBouncer to take it
# What may not run during a switchover, on any database host: each would fail or copy a half-switched tier.
BUSY = ("busy=''; "
        "systemctl is-active -q mcp-base-backup.service && busy=\"$busy base backup,\"; "
        "systemctl is-active -q mcp-restore-drill.service && busy=\"$busy restore drill,\"; "
        "pgrep -f '[m]cp-base-backup restore' >/dev/null && busy=\"$busy point-in-time restore,\"; "
        "echo \"$busy\"")


def preflight(tier, target):
    """Refuse, naming the reason, anything that would make the switchover unsafe."""
    if target not in tier.database_hosts:
        raise Refused(f"{target} is not one of the inventory's database hosts ({', '.join(tier.database_hosts)})")
    primary = tier.primary
    if target == primary:
        raise Refused(f"{target} is already the primary")
    for name in tier.database_hosts + tier.group("pgbouncer"):
        if not tier.reachable(name):
            raise Refused(f"{name} is unreachable over ssh: a switchover needs every host (for a lost primary: "
                          f"mcp-ha failover)")
    nodes = {name: tier.node(name) for name in tier.database_hosts}
    if not nodes[primary] or nodes[primary]["in_recovery"]:
        raise Refused(f"{primary}, the inventory's primary, is not a running primary; find the live one "
                      "(mcp-ha status) before switching over")
    state = nodes[target]
    if not state or not state["in_recovery"] or state["system_identifier"] != nodes[primary]["system_identifier"]:
        raise Refused(f"{target} is not a running standby of {primary}")
    if not state["streaming"]:
        raise Refused(f"{target} is not streaming from {primary}; it would not receive the last WAL")
    lag = lsn(nodes[primary]["current_lsn"]) - lsn(state["replay_lsn"])
    threshold = lag_threshold_mb(target, knobs(tier.hosts[target]))
    if lag > threshold * 2**20:
        raise Refused(f"{target} replays {lag / 2**20:.1f} MB behind {primary}, over its lag threshold "
                      f"({threshold} MB); wait for it to catch up or pick another replica")
    for name in tier.database_hosts:
        busy = tier.run(name, BUSY)[1].strip(" ,")
        if busy:
            raise Refused(f"{name} is running a {busy}; wait for it to finish")


def _entries(tier, pooler):
    """What a switchover holds on a PgBouncer host: the read-write entry, and the auth lookup (on the primary too)."""
    return [tier.data(pooler, "pgbouncer_rw_entry"), tier.data(pooler, "pgbouncer_auth_database")]


def pause(tier, patient=True):
    """Hold new transactions on every PgBouncer host. Patient: wait for those in flight to finish (a switchover);
    otherwise hold and go on (a failover: transactions on a lost primary never finish, and PgBouncer stays
    paused when the command gives up waiting)."""
    for pooler in tier.group("pgbouncer"):
        for entry in _entries(tier, pooler):
            tier.run(pooler, tier.pgbouncer_command(pooler, f"PAUSE {entry}"),
                     timeout=PAUSE_TIMEOUT_S if patient else LOST_PAUSE_S, check=patient)


def resume(tier):
    """Let every PgBouncer host's held clients go on; said, not raised, where that fails (an SRE must look)."""
    for pooler in tier.group("pgbouncer"):
        for entry in _entries(tier, pooler):
            ok, output = tier.run(pooler, tier.pgbouncer_command(pooler, f"RESUME {entry}") + " 2>&1", check=False)
            if not ok and "is not paused" not in output:
                say(f"WARNING: {pooler}: RESUME {entry} failed ({output or 'no answer'}); run it on the admin console")


def _wait_replayed(tier, target, position):
    deadline = time.monotonic() + CATCH_UP_S
    while time.monotonic() < deadline:
        replayed = tier.psql(target, "select pg_last_wal_replay_lsn()")
        if replayed and lsn(replayed) > position:
            return
        time.sleep(0.2)
    raise Refused(f"{target} did not replay the old primary's last WAL within {CATCH_UP_S} s")


def promote(tier, target, started):
    """Promote `target`, give every other database host a slot on it, record it, re-point PgBouncer and resume it
    (whatever happens after the promotion: held clients must not wait forever). Returns the tier as it reads now."""
    try:
        tier.psql(target, "select pg_promote(true, 60)", timeout=90)
        tier.ensure_slots(target, [n for n in tier.database_hosts if n != target])
        record = tier.hosts[target].data.get("primary_record")
        record_primary(record, target)
        say(f"{target} promoted and recorded in {record}; re-pointing PgBouncer")
        repointed = type(tier)(tier.inventory_path)  # the inventory as it reads now
        repointed.deploy("pgbouncer")
    finally:
        resume(tier)
        say(f"PgBouncer resumed: clients were held {time.monotonic() - started:.1f} s")
    return repointed


def switchover(tier, target):
    old = tier.primary
    preflight(tier, target)
    pg = layout.Cluster(tier.data(old, "postgres_major"), tier.data(old, "postgres_cluster"))
    say(f"switchover {old} -> {target}: pausing PgBouncer")
    started = time.monotonic()
    try:
        pause(tier)
    except Refused as exc:  # a transaction longer than the wait: PgBouncer stays paused unless told otherwise
        resume(tier)
        raise Refused(f"{exc}: a transaction in flight did not finish; switchover abandoned before any change, "
                      "PgBouncer resumed") from None
    try:
        tier.run(old, f"{FENCE} stop 'switchover to {target}'")
        checkpoint = tier.run(old, f"LC_ALL=C {pg.bin('pg_controldata')} {pg.data_directory} "
                                   "| sed -n 's/^Latest checkpoint location: *//p'")[1]
        say(f"{old} stopped cleanly at {checkpoint}; waiting for {target} to replay it")
        _wait_replayed(tier, target, lsn(checkpoint))
    except Refused as exc:
        tier.run(old, f"rm -f {fence.MARKER} && systemctl start {pg.unit}", check=False)
        resume(tier)
        raise Refused(f"{exc}; switchover abandoned: {old} restarted as the primary, PgBouncer resumed") from None
    repointed = promote(tier, target, started)
    say(f"re-pointing the replicas and rejoining {old} with pg_rewind")
    repointed.deploy()
    return repointed
