"""Each member's purpose, tags and the synchronous-replication precondition (deploys/replication.py)."""

from deploys.knobs import check
from deploys.replication import lag_threshold_mb, synchronous_problem, tags

HOSTS = ["pg-1", "pg-2", "pg-3"]


def knobs(**values):
    return check(values, "pg-1", lambda key: "group_data/all.py")


def test_a_reporting_member_yields_to_a_realtime_one_and_reads_further_behind():
    k = knobs(replica_purposes={"pg-3": "reporting"})
    assert tags("pg-3", k) == {"failover_priority": 1, "nosync": False, "purpose": "reporting"}
    assert tags("pg-2", k)["failover_priority"] == 2
    assert (lag_threshold_mb("pg-2", k), lag_threshold_mb("pg-3", k)) == (10, 100)
    assert lag_threshold_mb("pg-3", knobs(replica_purposes={"pg-3": "reporting"}, replica_lag_threshold_mb={"pg-3": 50})) == 50


def test_synchronous_replication_needs_three_eligible_members():
    assert synchronous_problem(HOSTS, knobs(synchronous_replication=True)) is None
    assert synchronous_problem(HOSTS[:2], knobs(synchronous_replication=False)) is None
    problem = synchronous_problem(HOSTS, knobs(synchronous_replication=True, replica_sync_eligible={"pg-3": False}))
    assert problem.startswith("synchronous_replication: 2 sync-eligible database host(s) (pg-1, pg-2); it needs three")
    assert tags("pg-3", knobs(replica_sync_eligible={"pg-3": False}))["nosync"] is True
