"""Drills on the fleet, in order, each starting from where the last left the tier: the refusals that change nothing,
a switchover under a write load, then the faults Patroni must heal by itself (a crashed PostgreSQL, a frozen or
killed Patroni, a lost leader host, a leader cut off the network, lost etcd members and quorum, a lost PgBouncer
host) and a failover with synchronous replication. Each fault is made under a write load through both PgBouncer
hosts; each drill prints what the clients saw: the longest time no commit was acknowledged (RTO) and the
acknowledged rows the new leader lacks (RPO). After each, a deploy changes nothing.

The fleet runs the fast timing profile (group_data/local.py: ttl 20 s, loop_wait 5 s, retry_timeout 5 s)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostside import layout
from tests.drills.load import CREATE, TABLE, WriteLoad
from tests.e2e.test_deploy import REPO, changed_operations, deploy, grand_total
from tests.e2e.test_replication import eventually, run_with
from tests.e2e.test_pgbouncer import ADDRESSES
from tests.fleet_helpers import DATABASE, fleet, leader, members, on
from tests.infra.test_wal_archive import archived

MCP_HA = str(Path(sys.executable).with_name("mcp-ha"))
LOCAL = "inventory/local.py"
PATRONI = "patroni@17-main"
DATADIR = "/var/lib/postgresql/17/main"
POOLERS = ("pgbouncer-1", "pgbouncer-2")
TTL_S = 20  # group_data/local.py's patroni_ttl
BACKUP_UNIT = "mcp-base-backup.service"


def mcp_ha(*args, check=True):
    result = subprocess.run([MCP_HA, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert not check or result.returncode == 0, output[-4000:]
    return result.returncode, output


def sql(host, query, database="portal", check=True):
    """A query as postgres over the host's own socket (no pooler, no HAProxy): what a direct client sees."""
    result = on(host, f"runuser -u postgres -- psql -d {database} -XtAc \"{query}\"", check=check)
    return result.stdout.strip() if check else result


def present(host, ids):
    """Which of `ids` the table on `host` holds."""
    return {int(r) for r in sql(host, f"select id from public.{TABLE}").split()} & set(ids)


def healthy(lead=None, timeout=120):
    """Wait until one member leads (`lead`, when given) and every other streams from it on its timeline, under 1 MB
    behind as Patroni sees it; the leader."""
    def settled():
        found = members()
        leaders = [n for n, m in found.items() if m["role"] == "leader"]
        if len(leaders) != 1 or (lead and leaders != [lead]) or set(found) != set(DATABASE):
            return False
        timeline = found[leaders[0]].get("timeline")
        return all(m["state"] == "streaming" and m.get("timeline") == timeline and isinstance(m.get("lag"), int)
                   and m["lag"] < 2**20 for n, m in found.items() if n != leaders[0])
    eventually(settled, timeout=timeout)
    return leader()


def deploy_with(inventory):
    result = run_with(inventory)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


def no_drift(inventory=LOCAL):
    """A deploy changes nothing, and the leader's archiver keeps up (a file left from an older timeline would stop
    it)."""
    output = deploy_with(inventory)
    assert grand_total(output)[1] == 0, changed_operations(output)
    lead = leader()
    # The segment the switch closed (read after it, the current position may already be past a heartbeat's write).
    closed = sql(lead, "select pg_walfile_name(pg_switch_wal())")
    eventually(lambda: on(lead, archived(f"{DATADIR}/pg_wal", closed), check=False).returncode == 0, timeout=60)


def paused(pooler):
    """PgBouncer's `paused` column for the read-write entry on `pooler`."""
    header, *rows = on(pooler, "runuser -u postgres -- psql -h /var/run/postgresql -p 6432 -U pgbouncer pgbouncer "
                               "-XAc 'show databases'").stdout.splitlines()
    databases = {row.split("|")[0]: dict(zip(header.split("|"), row.split("|"))) for row in rows if "|" in row}
    return databases["portal"]["paused"]


def report(drill, load, since, lost, **extra):
    """One line the drill prints: what the portal's clients saw (bench/failover.py collects the same figures)."""
    facts = "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in extra.items())
    print(f"{drill}: no commit acknowledged for {load.outage(since):.1f} s (RTO); {len(lost)} acknowledged rows lost "
          f"(RPO); {len(load.acknowledged)} acknowledged, {len(load.failures_since(since))} client errors" + (f"; {facts}" if facts else ""))


def pick_replica(lead, purpose="realtime"):
    return next(n for n, m in members().items() if n != lead and m.get("tags", {}).get("purpose") == purpose)


@pytest.fixture(scope="module", autouse=True)
def drill_table():
    deploy()  # the drills start from a converged fleet
    lead = healthy()
    sql(lead, CREATE)
    # The backup the last drill rebuilds a replica from: the drills' promotions come after it.
    on(lead, f"systemctl start {BACKUP_UNIT}", timeout=600)


@pytest.fixture
def unchanged():
    """Asserts after the test that the refused command changed nothing: same leader, no PgBouncer paused."""
    before = healthy()
    yield
    assert healthy() == before
    assert all(paused(p) == "0" for p in POOLERS)


def test_switchover_to_a_host_outside_the_inventory_is_refused(unchanged):
    code, output = mcp_ha("switchover", LOCAL, "--to", "pg-9", check=False)
    assert code == 1 and "pg-9 is not one of the inventory's database hosts" in output


def test_switchover_to_a_member_whose_patroni_is_stopped_is_refused(unchanged):
    replica = pick_replica(leader())
    on(replica, f"systemctl stop {PATRONI}")  # it leaves the cluster: its PostgreSQL stops with it
    try:
        code, output = mcp_ha("switchover", LOCAL, "--to", replica, check=False)
    finally:
        on(replica, f"systemctl start {PATRONI}")
    assert code == 1 and f"{replica} is not a streaming replica" in output


def test_switchover_to_a_lagging_replica_is_refused(unchanged):
    lead = leader()
    replica = pick_replica(lead)
    # Its WAL receiver frozen, 20 MB of WAL written: Patroni reports it over a realtime replica's 10 MB threshold.
    on(replica, "pkill -STOP -f 'postgres: .*: walreceiver'")
    try:
        sql(lead, "create table drill_lag as select g, repeat('x', 100) as pad from generate_series(1, 120000) g")
        eventually(lambda: (members()[replica].get("lag") or 0) > 10 * 2**20, timeout=30)
        code, output = mcp_ha("switchover", LOCAL, "--to", replica, check=False)
    finally:
        on(replica, "pkill -CONT -f 'postgres: .*: walreceiver'")
        sql(lead, "drop table if exists drill_lag")
    assert code == 1 and "over its lag threshold (10 MB)" in output, output


def test_switchover_while_a_restore_runs_is_refused(unchanged):
    lead = leader()
    other = [n for n in DATABASE if n != lead]
    # What the check looks for: a point-in-time restore's process (restore.py runs mcp-base-backup restore).
    on(other[-1], "systemd-run --unit drill-restore -p Type=exec /bin/bash -c "
                  f"'exec -a \"/usr/bin/python3 -IBu {layout.program('base-backup')} restore\" sleep 120'")
    try:
        code, output = mcp_ha("switchover", LOCAL, "--to", other[0], check=False)
    finally:
        on(other[-1], "systemctl stop drill-restore")
    assert code == 1 and f"{other[-1]} is running a point-in-time restore" in output


def test_switchover_under_load_fails_no_transaction_and_loses_no_row():
    old = healthy()
    target = pick_replica(old)
    with WriteLoad() as load:
        load.wait_for(200)
        started = time.time()
        code, output = mcp_ha("switchover", LOCAL, "--to", target)
        load.more(200)  # and writes go on, on the new leader
    assert load.failures_since(started) == []
    assert healthy(target) == target
    acknowledged = set(load.acknowledged)
    assert present(target, acknowledged) == acknowledged
    held = float(output.split("clients were held ")[1].split(" s")[0])
    report(f"switchover {old} -> {target}", load, started, set(), clients_held=f"{held} s")
    no_drift()


def test_a_crashed_postgres_on_the_leader_is_restarted_in_place_and_loses_nothing():
    """The postmaster killed (its backends go with it): Patroni restarts it (crash recovery) within
    primary_start_timeout (300 s) rather than fail over, and every acknowledged commit was flushed before it was."""
    lead = healthy()
    with WriteLoad() as load:
        load.wait_for(200)
        started = time.time()
        on(lead, f"kill -KILL $(head -1 {DATADIR}/postmaster.pid)")
        load.more(200)
        acknowledged = load.stop()
    assert healthy() == lead
    lost = set(acknowledged) - present(lead, acknowledged)
    assert lost == set()
    report(f"PostgreSQL killed on {lead} (primary_start_timeout 300)", load, started, lost)


def test_with_primary_start_timeout_0_a_crashed_leader_fails_over_at_once():
    deploy("--data", "patroni_primary_start_timeout=0")
    try:
        old = healthy()
        with WriteLoad() as load:
            load.wait_for(200)
            started = time.time()
            on(old, f"kill -KILL $(head -1 {DATADIR}/postmaster.pid)")
            new = eventually(lambda: (leader() or old) != old and leader(), timeout=TTL_S * 3)
            load.more(200)
            acknowledged = load.stop()
        rejoined(old, new, time.time())
        lost = set(acknowledged) - present(new, acknowledged)
        assert all(acknowledged[r] > started - 5 for r in lost)
        report(f"PostgreSQL killed on {old} (primary_start_timeout 0), {new} took over", load, started, lost)
    finally:
        deploy()
    no_drift()


def test_a_killed_patroni_on_the_leader_is_restarted_by_systemd_and_nothing_fails_over():
    lead = healthy()
    before = on(lead, f"systemctl show -p NRestarts --value {PATRONI}").stdout.strip()
    with WriteLoad() as load:
        load.wait_for(200)
        started = time.time()
        on(lead, f"systemctl kill -s KILL --kill-whom=main {PATRONI}")
        eventually(lambda: on(lead, f"systemctl show -p NRestarts --value {PATRONI}").stdout.strip() != before)
        load.more(200)
        acknowledged = load.stop()
    assert healthy() == lead and on(lead, f"systemctl is-active {PATRONI}").stdout.strip() == "active"
    lost = set(acknowledged) - present(lead, acknowledged)
    # PostgreSQL kept running and nothing is lost. While Patroni is down its REST API does not answer, so HAProxy
    # takes the leader out (and closes its sessions: the clients reconnect) until the restarted Patroni answers.
    assert lost == set()
    report(f"Patroni killed on {lead}", load, started, lost)


def lose_the_leader(how, load):
    """Make the fault `how` on the leader mid-load; (old leader, new leader, when the fault was made)."""
    old = healthy()
    load.wait_for(300)
    started = time.time()
    fleet({"stop": "stop", "cut": "cut"}[how], old)
    new = eventually(lambda: (leader() or old) != old and leader(), timeout=TTL_S * 3)
    load.more(100)  # writes go on through PgBouncer, on the new leader
    return old, new, started


def rejoined(old, new, started_again):
    """`old` back as a streaming replica of `new` (rewound: it had been a leader); how long that took."""
    healthy(new, timeout=240)
    return time.time() - started_again


def test_the_leader_host_lost_fails_over_and_the_old_leader_rejoins_rewound():
    with WriteLoad() as load:
        old, new, started = lose_the_leader("stop", load)
        acknowledged = load.stop()
    lost = set(acknowledged) - present(new, acknowledged)
    # Asynchronous: what is lost is at most what the replicas had not received when the host stopped, i.e. rows
    # acknowledged in the moment before; Patroni promoted no replica more than maximum_lag_on_failover behind.
    assert all(acknowledged[r] > started - 5 for r in lost)
    assert new in DATABASE and new != old
    restarted = time.time()
    fleet("start", old)
    took = rejoined(old, new, restarted)
    report(f"leader host {old} stopped, {new} took over", load, started, lost, rejoined_after=f"{took:.0f} s")
    no_drift()


def test_a_leader_cut_off_the_network_stops_taking_writes_before_another_is_promoted():
    """No split brain: a client connected straight to the cut-off leader (not through PgBouncer) can commit there
    only until that leader demotes itself, which Patroni does before its leader lock can expire (ttl >= loop_wait +
    2 x retry_timeout); only then may another member take the lock."""
    old = healthy()
    writer = (f"while :; do runuser -u postgres -- psql -d portal -XtAqc \"insert into public.{TABLE} default values "
              "returning id, extract(epoch from clock_timestamp())\" >> /root/direct.log 2>/dev/null; sleep 0.1; done")
    on(old, f"rm -f /root/direct.log; systemd-run --unit drill-direct /bin/sh -c '{writer}'")
    try:
        with WriteLoad() as load:
            old, new, started = lose_the_leader("cut", load)
            acknowledged = load.stop()
        promoted = load.first_commit_on(ADDRESSES[new], started)
        restarted = time.time()
        fleet("heal", old)
        took = rejoined(old, new, restarted)
    finally:
        fleet("heal", old, check=False)
        on(old, "systemctl stop drill-direct", check=False)
    direct = [line.split("|") for line in on(old, "cat /root/direct.log").stdout.split() if "|" in line]
    last_direct = max(float(at) for _, at in direct)
    # The old leader stopped acknowledging within the ttl of the cut, and before the first commit the clients saw
    # on the new leader.
    assert last_direct - started <= TTL_S, f"{old} acknowledged a commit {last_direct - started:.1f} s after the cut"
    assert last_direct < promoted, f"{old} took a direct commit {last_direct - promoted:.1f} s after {new} took one"
    after_cut = [int(row) for row, at in direct if float(at) > started]
    lost = set(acknowledged) - present(new, acknowledged)
    report(f"leader {old} cut off, {new} took over", load, started, lost,
           direct_commits_on_the_cut_leader=f"{len(after_cut)} in {last_direct - started:.1f} s (rewound away)",
           demoted_before_the_promotion_by=f"{promoted - last_direct:.1f} s", rejoined_after=f"{took:.0f} s")
    no_drift()


def test_a_frozen_patroni_on_the_leader_loses_the_leader_and_demotes_when_it_thaws():
    """Patroni stopped (SIGSTOP), its PostgreSQL still a primary: HAProxy's check of it fails at once, so the pooled
    clients wait for the new leader; once Patroni runs again it finds another leader, demotes and rejoins. (A
    client connected straight to the frozen leader could still commit there: the watchdog, patroni_watchdog, is
    what resets such a host in production; the fleet's containers have none, docs/failover.md.)"""
    old = healthy()
    with WriteLoad() as load:
        load.wait_for(300)
        started = time.time()
        on(old, f"systemctl kill -s STOP --kill-whom=main {PATRONI}")
        try:
            new = eventually(lambda: (leader() or old) != old and leader(), timeout=TTL_S * 3)
            load.more(100)
        finally:
            on(old, f"systemctl kill -s CONT --kill-whom=main {PATRONI}")
        acknowledged = load.stop()
    thawed = time.time()
    took = rejoined(old, new, thawed)
    lost = set(acknowledged) - present(new, acknowledged)
    assert lost == set()  # HAProxy stopped sending to the frozen leader before the replicas stopped streaming it
    report(f"Patroni frozen on {old}, {new} took over", load, started, lost, rejoined_after=f"{took:.0f} s")
    no_drift()


def etcd(host, action):
    on(host, f"systemctl {action} etcd")


def test_one_etcd_member_lost_changes_nothing():
    lead = healthy()
    member = next(n for n in DATABASE if n != lead)
    with WriteLoad() as load:
        load.wait_for(200)
        started = time.time()
        etcd(member, "stop")
        try:
            load.more(300)
            assert leader() == lead
        finally:
            etcd(member, "start")
        acknowledged = load.stop()
    assert load.failures_since(started) == [] and healthy() == lead
    report(f"etcd stopped on {member}", load, started, set(set(acknowledged) - present(lead, acknowledged)))


def test_without_etcd_quorum_the_leader_keeps_writing_while_it_reaches_every_member_and_demotes_when_not():
    """failsafe_mode: with etcd's quorum lost, the leader stays a primary as long as every member's Patroni answers
    it (none of them can be promoted without etcd); once one does not, it demotes, and no member leads."""
    lead = healthy()
    others = [n for n in DATABASE if n != lead]
    with WriteLoad() as load:
        load.wait_for(200)
        started = time.time()
        for member in others:
            etcd(member, "stop")
        try:
            time.sleep(TTL_S + 5)  # past the leader lock's expiry
            load.more(200)
            assert sql(lead, "select pg_is_in_recovery()") == "f"
            status = json.loads(on(lead, f"{layout.program('cluster')} status").stdout)
            assert status.get("failsafe_mode_is_active") is True, status
            on(others[0], f"systemctl stop {PATRONI}")  # one member no longer answers the leader
            eventually(lambda: sql(lead, "select pg_is_in_recovery()", check=False).stdout.strip() == "t",
                       timeout=TTL_S * 2)
            demoted = time.time()
        finally:
            for member in others:
                etcd(member, "start")
            on(others[0], f"systemctl start {PATRONI}")
        acknowledged = load.stop()
        lead_again = healthy(timeout=180)
    lost = set(acknowledged) - present(lead_again, acknowledged)
    assert lost == set()
    report(f"etcd quorum lost (failsafe kept {lead} writing), then {others[0]}'s Patroni stopped", load, started, lost,
           demoted_after_the_member_was_lost=f"{demoted - started - TTL_S - 5:.1f} s", leader_again=lead_again)
    no_drift()


def test_a_lost_pgbouncer_host_costs_the_clients_a_reconnect_to_the_other():
    lead = healthy()
    with WriteLoad() as load:
        load.wait_for(200)
        started = time.time()
        fleet("stop", POOLERS[0])
        try:
            load.more(300)
        finally:
            fleet("start", POOLERS[0])
        acknowledged = load.stop()
    lost = set(acknowledged) - present(lead, acknowledged)
    assert lost == set()
    eventually(lambda: on(POOLERS[0], "systemctl is-active pgbouncer haproxy", check=False).returncode == 0, timeout=60)
    report(f"{POOLERS[0]} stopped (clients moved to {POOLERS[1]})", load, started, lost)
    no_drift()


def synchronous_inventory(tmp_path):
    """The local inventory with group_data that turns synchronous replication on, as an operator would."""
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text("synchronous_replication = True\n")
    path = tmp_path / "local.py"  # named local.py so group_data/local.py still applies
    path.write_text((REPO / LOCAL).read_text())
    return str(path)


def test_with_synchronous_replication_a_lost_leader_host_loses_no_acknowledged_row(tmp_path):
    inventory = synchronous_inventory(tmp_path)
    deploy_with(inventory)
    try:
        lead = healthy()
        eventually(lambda: sql(lead, "select string_agg(sync_state, ',') from pg_stat_replication") == "quorum,quorum")
        with WriteLoad() as load:
            old, new, started = lose_the_leader("stop", load)
            acknowledged = load.stop()
        lost = set(acknowledged) - present(new, acknowledged)
        assert lost == set()
        restarted = time.time()
        fleet("start", old)
        took = rejoined(old, new, restarted)
        report(f"synchronous: leader host {old} stopped, {new} took over", load, started, lost,
               rejoined_after=f"{took:.0f} s")
        no_drift(inventory)
    finally:
        deploy()  # synchronous replication off again, as the fleet's group_data says
    assert sql(leader(), "show synchronous_standby_names") == ""


def test_a_replica_rebuilt_from_the_newest_backup_replays_the_archive_across_the_drills_promotions():
    lead = healthy()
    replica = [n for n in DATABASE if n != lead][-1]
    program = layout.program("base-backup")
    newest = json.loads(on(lead, f"runuser -u postgres -- {program} list").stdout.splitlines()[-1])
    written = sql(lead, f"insert into public.{TABLE} default values returning id").splitlines()[0]
    on(replica, f"systemctl stop {PATRONI} && mv {DATADIR} {DATADIR}.broken")
    try:
        since = on(replica, "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
        on(replica, f"systemctl start {PATRONI}")  # an empty member: Patroni's first replica method restores
        healthy(lead, timeout=300)
        journal = on(replica, f"journalctl -u {PATRONI} --since '{since}' --no-pager").stdout
        assert "replica has been created using backup" in journal and f"restoring backup {newest['id']}" in journal
        eventually(lambda: sql(replica, f"select count(*) from public.{TABLE} where id = {written}") == "1")
        # Every row, by a scan of the table: a copy that skipped WAL would still find some by their index.
        count = f"select count(*) from public.{TABLE}"
        eventually(lambda: sql(replica, count) == sql(lead, count))
    except AssertionError:
        on(replica, f"systemctl stop {PATRONI}; rm -rf {DATADIR} && mv {DATADIR}.broken {DATADIR} && "
                    f"systemctl start {PATRONI}")
        raise
    on(replica, f"rm -rf {DATADIR}.broken")
    print(f"{replica} rebuilt from backup {newest['id']} (WAL from {newest['start_lsn']}), now on timeline "
          f"{members()[lead]['timeline']} with the leader")
    no_drift()
