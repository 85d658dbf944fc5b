"""What each database host is while it is a replica: its purpose's standby settings, lag threshold and Patroni tags.
Patroni does the replicating (slots, cloning, following the leader, rewinding); this module says how.

Purposes (the assessment's section 8): a realtime replica serves fresh reads and is the one a failover prefers; a
reporting replica lets long queries finish (replay may wait for them), so promoting it could mean replaying
minutes of WAL first: it takes over only when no realtime replica can.
"""

from deploys.knobs import knobs

PURPOSES = {
    # Long queries must finish: they may delay replay, and they do not hold back the primary's vacuum.
    "reporting": {"settings": {"hot_standby_feedback": "off", "max_standby_streaming_delay": "15min"},
                  "lag_threshold_mb": 100, "failover_priority": 1},
    # Fresh reads: replay is delayed at most 30 s, and feedback avoids query cancellations.
    "realtime": {"settings": {"hot_standby_feedback": "on", "max_standby_streaming_delay": "30s"},
                 "lag_threshold_mb": 10, "failover_priority": 2},
}


def slot_name(member):
    """The physical slot Patroni keeps for `member` (its name lower-cased, '-' and '.' as '_')."""
    return member.lower().replace("-", "_").replace(".", "_")


def purpose_of(name, k=None):
    """Database host `name`'s purpose, from the knobs `k` (default: the planned host's)."""
    return (k or knobs()).replica_purposes.get(name, "realtime")


def lag_threshold_mb(name, k=None):
    """How far (MB of WAL) `name` may replay behind the leader: replica_lag_threshold_mb, else its purpose's."""
    k = k or knobs()
    return k.replica_lag_threshold_mb.get(name, PURPOSES[purpose_of(name, k)]["lag_threshold_mb"])


def standby_settings(name, k=None):
    """The postgresql.conf lines host `name` carries for when it is a replica (a primary ignores them)."""
    return dict(PURPOSES[purpose_of(name, k)]["settings"])


def tags(name, k=None):
    """Patroni's tags for host `name`: failover_priority by purpose (a tie between equally advanced replicas goes to
    the higher), nosync when replica_sync_eligible leaves it out, and its purpose (HAProxy reads it)."""
    k = k or knobs()
    return {"failover_priority": PURPOSES[purpose_of(name, k)]["failover_priority"],
            "nosync": not k.replica_sync_eligible.get(name, True), "purpose": purpose_of(name, k)}


def synchronous_problem(names, k=None):
    """Why synchronous replication cannot be on for database hosts `names`, or None. Patroni runs it strict (a
    commit waits while no eligible replica acknowledges it): whichever member leads needs two eligible others, so
    that losing one does not stop every commit."""
    k = k or knobs()
    eligible = [name for name in names if k.replica_sync_eligible.get(name, True)]
    if k.synchronous_replication and len(eligible) < 3:
        return (f"synchronous_replication: {len(eligible)} sync-eligible database host(s) ({', '.join(eligible) or 'none'}); "
                "it needs three, so that the leader keeps two to acknowledge commits: add a database host or turn it off")
    return None
