"""Streaming replicas on the fleet: data flows, purposes set real settings, replicas join and leave through
the inventory, and the deploy refuses an inventory that disagrees with the live cluster."""

import subprocess
import time

import pytest

from tests.e2e.test_deploy import PYINFRA, REPO, deploy, grand_total
from fleet.access import Access
from fleet.layout import Layout
from tests.fleet_helpers import fleet, on

REPLICAS = ["pg-replica-1", "pg-replica-2"]


def psql(host, sql):
    return on(host, f"runuser -u postgres -- psql -XtAc \"{sql}\"").stdout.strip()


def started(host):
    return psql(host, "select pg_postmaster_start_time()")


def eventually(check, timeout=30):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout}s"
        time.sleep(0.5)


def inventory_file(tmp_path, body):
    """A variant of the fleet's inventory. Named local.py so group_data/local.py still applies."""
    path = tmp_path / "local.py"
    path.write_text("from fleet.inventory import pyinfra_groups\n_g = pyinfra_groups()\n" + body)
    return str(path)


def run_with(inventory, *args):
    return subprocess.run([PYINFRA, "-y", inventory, "deploy.py", *args], cwd=REPO, capture_output=True, text=True, timeout=900)


def test_a_write_on_the_primary_reaches_every_replica():
    psql("pg-primary", "create table if not exists replication_probe(id int); insert into replication_probe values (7)")
    for replica in REPLICAS:
        eventually(lambda: on(replica, "runuser -u postgres -- psql -XtAc 'select count(*) from replication_probe'",
                              check=False).stdout.strip() not in ("", "0"))
        assert psql(replica, "select pg_is_in_recovery()") == "t"
    psql("pg-primary", "drop table replication_probe")


@pytest.mark.parametrize("replica, feedback, delay", [("pg-replica-1", "on", "30s"), ("pg-replica-2", "off", "15min")])
def test_purpose_sets_standby_settings(replica, feedback, delay):
    assert psql(replica, "show hot_standby_feedback") == feedback
    assert psql(replica, "show max_standby_streaming_delay") == delay


def test_inventory_naming_a_standby_as_primary_is_refused_before_any_change(tmp_path):
    swapped = inventory_file(tmp_path, "primary = [_g['replicas'][0]]\nreplicas = _g['primary'] + _g['replicas'][1:]\n"
                                       "pgbouncer = _g['pgbouncer']\n")
    result = run_with(swapped)
    assert result.returncode != 0
    assert "the inventory names pg-replica-1 the primary, but it is in recovery" in result.stdout + result.stderr
    assert psql("pg-replica-1", "select pg_is_in_recovery()") == "t"


def test_a_replica_leaves_the_inventory_then_joins_again_without_restarting_the_others(tmp_path):
    without = inventory_file(tmp_path, "primary = _g['primary']\nreplicas = _g['replicas'][:1]\npgbouncer = _g['pgbouncer']\n")
    # The operator also takes it out of group_data, which the deploy would otherwise refuse as a stray name.
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "local.py").write_text('replica_purposes = {"pg-replica-1": "realtime"}\n')
    fleet("stop", "pg-replica-2")
    result = run_with(without, "--group-data", str(tmp_path / "group_data"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Drop replication slot replica_pg_replica_2" in result.stderr + result.stdout
    assert psql("pg-primary", "select string_agg(slot_name, ',') from pg_replication_slots") == "replica_pg_replica_1"

    before = {h: started(h) for h in ("pg-primary", "pg-replica-1")}
    fleet("reset", "pg-replica-2")  # a new, bare host joins
    output = deploy()
    assert "Clone from pg-primary" in output
    assert {h: started(h) for h in ("pg-primary", "pg-replica-1")} == before
    eventually(lambda: psql("pg-primary", "select count(*) from pg_stat_replication where state = 'streaming'") == "2")
    assert grand_total(deploy())[1] == 0


@pytest.mark.parametrize("body, message", [
    ("primary = _g['primary'] + _g['replicas'][:1]\nreplicas = _g['replicas'][1:]\npgbouncer = _g['pgbouncer']\n",
     "the inventory needs exactly one host in group primary, has 2 (pg-primary, pg-replica-1)"),
    ("replicas = _g['replicas']\npgbouncer = _g['pgbouncer']\n", "has 0 (none); a replica with no primary"),
    ("primary = _g['primary']\nreplicas = _g['replicas']\npgbouncer = []\n", "group pgbouncer is empty or missing"),
], ids=["two primaries", "no primary", "empty pgbouncer group"])
def test_a_bad_inventory_is_refused_before_any_change(tmp_path, body, message):
    on("pg-replica-2", "rm /etc/mcp-portal/roles")  # a change any run would make
    result = run_with(inventory_file(tmp_path, body))
    assert result.returncode != 0 and message in result.stdout + result.stderr
    assert on("pg-replica-2", "test -e /etc/mcp-portal/roles", check=False).returncode == 1
    deploy()


def committing():
    """An insert on the primary, committing in the background: (its psql process, a way to see what it waits on)."""
    psql("pg-primary", "create table if not exists sync_probe (at timestamptz)")
    process = subprocess.Popen(Access(Layout()).ssh_argv("pg-primary", "runuser -u postgres -- psql -Xq -v "
                               "ON_ERROR_STOP=1 -c 'insert into sync_probe values (now())'"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, lambda: psql("pg-primary", "select string_agg(wait_event, ',') from pg_stat_activity "
                                               "where query like 'insert into sync_probe%'")


def test_synchronous_replication_waits_for_any_one_replica():
    deploy("--data", "synchronous_replication=true")
    try:
        names = "ANY 1 (replica_pg_replica_1, replica_pg_replica_2)"
        assert psql("pg-primary", "show synchronous_standby_names") == names
        eventually(lambda: psql("pg-primary", "select string_agg(sync_state, ',' order by application_name) "
                                              "from pg_stat_replication") == "quorum,quorum")
        fleet("cut", "pg-replica-1")
        try:  # losing one candidate does not stop commits: the other acknowledges
            process, _ = committing()
            assert process.wait(timeout=30) == 0
            fleet("cut", "pg-replica-2")
            try:  # with none left a commit waits for one
                process, waiting_on = committing()
                eventually(lambda: waiting_on() == "SyncRep")
                time.sleep(3)
                assert process.poll() is None and waiting_on() == "SyncRep"
            finally:
                fleet("heal", "pg-replica-2")
            assert process.wait(timeout=60) == 0  # and returns once one is back
        finally:
            fleet("heal", "pg-replica-1")
        eventually(lambda: psql("pg-primary", "select count(*) from pg_stat_replication where state = 'streaming'")
                   == "2", timeout=60)
    finally:
        deploy()
        psql("pg-primary", "drop table if exists sync_probe")
    assert psql("pg-primary", "show synchronous_standby_names") == ""
    assert psql("pg-primary", "select string_agg(distinct sync_state, ',') from pg_stat_replication") == "async"
