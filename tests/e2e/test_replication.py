"""Replication under Patroni on the fleet: data reaches every member, purposes set real settings and tags, a member
whose Patroni stopped is brought back by the deploy without touching the others, a foreign inventory shape is
refused before any change, and synchronous replication is Patroni's quorum mode. pg-1 leads (conftest.py)."""

import subprocess
import time

import pytest

from tests.e2e.test_deploy import REPO, deploy, grand_total, pyinfra_argv, still_pending
from fleet.access import Access
from fleet.layout import Layout
from tests.fleet_helpers import members, on

REPLICAS = ["pg-2", "pg-3"]
PATRONI = "patroni@17-main"


def psql(host, sql):
    return on(host, f"runuser -u postgres -- psql -XtAc \"{sql}\"").stdout.strip()


def started(host):
    return psql(host, "select pg_postmaster_start_time()")


def eventually(check, timeout=30):
    """Poll `check` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"not within {timeout}s"
        time.sleep(0.5)
    return value


def inventory_file(tmp_path, body):
    """A variant of the fleet's inventory. Named local.py so group_data/local.py still applies."""
    path = tmp_path / "local.py"
    path.write_text("from fleet.inventory import pyinfra_groups\n_g = pyinfra_groups()\n" + body)
    return str(path)


def run_with(inventory, *args):
    return subprocess.run(pyinfra_argv("-y", inventory, "deploy.py", *args), cwd=REPO, capture_output=True, text=True, timeout=900)


def streaming():
    """The members Patroni reports streaming."""
    return sorted(name for name, m in members().items() if m["state"] == "streaming")


def test_a_write_on_the_leader_reaches_every_replica():
    psql("pg-1", "create table if not exists replication_probe(id int); insert into replication_probe values (7)")
    for replica in REPLICAS:
        eventually(lambda: on(replica, "runuser -u postgres -- psql -XtAc 'select count(*) from replication_probe'",
                              check=False).stdout.strip() not in ("", "0"))
        assert psql(replica, "select pg_is_in_recovery()") == "t"
    psql("pg-1", "drop table replication_probe")


@pytest.mark.parametrize("replica, feedback, delay, priority", [("pg-2", "on", "30s", 2), ("pg-3", "off", "15min", 1)])
def test_purpose_sets_standby_settings_and_failover_priority(replica, feedback, delay, priority):
    assert psql(replica, "show hot_standby_feedback") == feedback
    assert psql(replica, "show max_standby_streaming_delay") == delay
    assert members()[replica]["tags"]["failover_priority"] == priority


def test_every_member_streams_from_the_leader_through_its_slot():
    assert streaming() == REPLICAS
    assert psql("pg-1", "select string_agg(slot_name || ':' || active, ',' order by slot_name) from pg_replication_slots") \
        == "pg_2:true,pg_3:true"


def test_a_member_whose_patroni_stopped_is_brought_back_without_touching_the_others():
    others = {h: started(h) for h in ("pg-1", "pg-2")}
    on("pg-3", f"systemctl stop {PATRONI}")  # a clean stop takes PostgreSQL down with it
    eventually(lambda: "pg-3" not in members(), timeout=60)
    output = deploy()
    assert "Start Patroni (joins the cluster led by pg-1)" in output
    eventually(lambda: streaming() == REPLICAS, timeout=60)
    assert {h: started(h) for h in ("pg-1", "pg-2")} == others
    assert grand_total(deploy())[1] == 0


def committing():
    """An insert on the primary, committing in the background: (its psql process, a way to see what it waits on)."""
    psql("pg-1", "create table if not exists sync_probe (at timestamptz)")
    process = subprocess.Popen(Access(Layout()).ssh_argv("pg-1", "runuser -u postgres -- psql -Xq -v "
                               "ON_ERROR_STOP=1 -c 'insert into sync_probe values (now())'"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, lambda: psql("pg-1", "select string_agg(wait_event, ',') from pg_stat_activity "
                                               "where query like 'insert into sync_probe%'")


def test_synchronous_replication_waits_for_any_one_replica():
    """Patroni's quorum mode, strict: a commit returns once one replica has it; with none, it waits. The replicas are
    stopped through Patroni, not cut off: etcd runs on the database hosts, and two of them cut off would take its
    quorum (and the leader's lock) with them."""
    deploy("--data", "synchronous_replication=true")
    try:
        eventually(lambda: psql("pg-1", "show synchronous_standby_names") == 'ANY 1 ("pg-2","pg-3")', timeout=60)
        eventually(lambda: psql("pg-1", "select string_agg(sync_state, ',' order by application_name) "
                                        "from pg_stat_replication") == "quorum,quorum")
        on("pg-2", f"systemctl stop {PATRONI}")
        try:  # losing one candidate does not stop commits: the other acknowledges
            process, _ = committing()
            assert process.wait(timeout=30) == 0
            on("pg-3", f"systemctl stop {PATRONI}")
            try:  # with none left a commit waits for one
                process, waiting_on = committing()
                eventually(lambda: waiting_on() == "SyncRep")
                time.sleep(3)
                assert process.poll() is None and waiting_on() == "SyncRep"
            finally:
                on("pg-3", f"systemctl start {PATRONI}")
            assert process.wait(timeout=90) == 0  # and returns once one is back
        finally:
            on("pg-2", f"systemctl start {PATRONI}")
        eventually(lambda: streaming() == REPLICAS, timeout=90)
    finally:
        deploy()
        psql("pg-1", "drop table if exists sync_probe")
    eventually(lambda: psql("pg-1", "show synchronous_standby_names") == "", timeout=60)
    assert psql("pg-1", "select string_agg(distinct sync_state, ',') from pg_stat_replication") == "async"


@pytest.mark.usefixtures("a_pending_change")
class TestBadInventories:
    """Each refused before any change: the pending change stays pending; the deploy after them converges."""

    @pytest.mark.parametrize("body, message", [
        ("primary = _g['database'][:1]\nreplicas = _g['database'][1:]\npgbouncer = _g['pgbouncer']\n",
         "the inventory has group(s) primary, replicas: the database hosts are one group, database"),
        ("pgbouncer = _g['pgbouncer']\n", "the inventory's group database is empty or missing"),
        ("database = _g['database']\npgbouncer = []\n", "group pgbouncer is empty or missing"),
        ("database = _g['database']\netcd = _g['database'][:2]\npgbouncer = _g['pgbouncer']\n",
         "etcd has 2 member(s) (pg-1, pg-2), fewer than etcd_minimum_members 3"),
    ], ids=["the layout before Patroni", "no database group", "empty pgbouncer group", "two etcd members"])
    def test_a_bad_inventory_is_refused_before_any_change(self, tmp_path, body, message):
        result = run_with(inventory_file(tmp_path, body))
        assert result.returncode != 0 and message in result.stdout + result.stderr
        assert still_pending()
