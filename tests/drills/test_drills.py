"""Drills on the fleet, in order, each starting from where the last left the tier: a switchover under a write
load, a failover without and then with synchronous replication (the lost primary fences itself when it is back
and rejoins with pg_rewind), and the refusals that change nothing. After each, a deploy changes nothing."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet.inventory import primary_record
from hostside import layout
from hostside.wal_archive import SEGMENT, lsn, segment_end, timeline_of
from inventory._primary import database_groups
from tests.drills.load import CREATE, TABLE, WriteLoad
from tests.e2e.test_deploy import REPO, deploy, grand_total
from tests.e2e.test_replication import eventually, psql, run_with
from tests.fleet_helpers import TOPOLOGY, fleet, on

MCP_HA = str(Path(sys.executable).with_name("mcp-ha"))
FENCE_INTERVAL_S = 10  # group_data's default fence_check_interval_s
# The stated bound (docs/failover.md): a check starts within the interval, and takes at most a few seconds.
FENCE_BOUND_S = FENCE_INTERVAL_S + 10
LOCAL = "inventory/local.py"
FENCE_METRIC = "/var/lib/mcp-portal/metrics/fence.prom"
BACKUP_UNIT = "mcp-base-backup.service"


def roles():
    """(primary, [replicas]) as the local inventory reads them now."""
    hosts = [(h.name, {}) for g in ("primary", "replicas") for h in TOPOLOGY.group(g)]
    primary, replicas = database_groups(primary_record(), hosts)
    return primary[0][0], [name for name, _ in replicas]


def mcp_ha(*args, check=True):
    result = subprocess.run([MCP_HA, *args], cwd=REPO, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert not check or result.returncode == 0, output[-4000:]
    return result.returncode, output


def portal(host, sql):
    return on(host, f"runuser -u postgres -- psql -d portal -XtAc \"{sql}\"").stdout.strip()


def present(host, ids):
    """Which of `ids` the table on `host` holds."""
    return {int(r) for r in portal(host, f"select id from public.{TABLE}").split()} & set(ids)


def streaming_from(primary, replicas):
    names = psql(primary, "select string_agg(application_name, ',' order by application_name) from pg_stat_replication "
                          "where state = 'streaming'")
    return names == ",".join(sorted("replica_" + r.replace("-", "_") for r in replicas))


def deploy_with(inventory):
    result = run_with(inventory)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout + result.stderr


def no_drift(inventory=LOCAL):
    """A deploy changes nothing, and the primary's archiver keeps up (a file left from an older timeline would stop it)."""
    assert grand_total(deploy_with(inventory))[1] == 0
    primary = roles()[0]
    psql(primary, "select pg_switch_wal()")
    closed = psql(primary, "select pg_walfile_name(pg_current_wal_lsn() - 1)")
    # Archived: its .done is there, or the segment is already recycled (never before it was archived). Not
    # last_archived_wal: after a promotion the old timeline's .partial may be archived after it.
    wal = "/var/lib/postgresql/17/main/pg_wal"
    eventually(lambda: on(primary, f"test -e {wal}/archive_status/{closed}.done || test ! -e {wal}/{closed}",
                          check=False).returncode == 0, timeout=60)


def synchronous_inventory(tmp_path):
    """The local inventory with group_data that turns synchronous replication on, as an operator would."""
    (tmp_path / "group_data").mkdir()
    (tmp_path / "group_data" / "all.py").write_text("synchronous_replication = True\n")
    path = tmp_path / "local.py"  # named local.py so group_data/local.py still applies
    path.write_text((REPO / LOCAL).read_text())
    return str(path)


def paused(pooler="pgbouncer-1"):
    """PgBouncer's `paused` column for the read-write entry."""
    header, *rows = on(pooler, "runuser -u postgres -- psql -h /var/run/postgresql -p 6432 -U pgbouncer pgbouncer "
                               "-XAc 'show databases'").stdout.splitlines()
    databases = {row.split("|")[0]: dict(zip(header.split("|"), row.split("|"))) for row in rows if "|" in row}
    return databases["portal"]["paused"]


@pytest.fixture(scope="module", autouse=True)
def drill_table():
    deploy()  # the drills start from a converged fleet
    primary, replicas = roles()
    portal(primary, CREATE)
    eventually(lambda: streaming_from(primary, replicas))
    # The backup the last drill rebuilds a replica from: the drills' promotions come after it.
    on(primary, f"systemctl start {BACKUP_UNIT}", timeout=600)


@pytest.fixture
def unchanged():
    """Asserts after the test that the refused command changed nothing: same primary, PgBouncer not paused."""
    before = roles()
    yield
    assert roles() == before
    assert psql(before[0], "select pg_is_in_recovery()") == "f"
    assert paused() == "0"


def test_switchover_to_a_host_outside_the_inventory_is_refused(unchanged):
    code, output = mcp_ha("switchover", LOCAL, "--to", "pg-9", check=False)
    assert code == 1 and "pg-9 is not one of the inventory's database hosts" in output


def test_switchover_to_a_stopped_replica_is_refused(unchanged):
    replica = roles()[1][0]
    on(replica, "systemctl stop postgresql@17-main")
    try:
        code, output = mcp_ha("switchover", LOCAL, "--to", replica, check=False)
    finally:
        on(replica, "systemctl start postgresql@17-main")
    assert code == 1 and f"{replica} is not a running standby" in output


def test_switchover_to_a_lagging_replica_is_refused(unchanged):
    primary, (replica, *_) = roles()
    psql(replica, "select pg_wal_replay_pause()")
    try:  # 20 MB of WAL it does not replay: over a realtime replica's 10 MB threshold
        portal(primary, "create table drill_lag as select g, repeat('x', 100) as pad from generate_series(1, 120000) g")
        code, output = mcp_ha("switchover", LOCAL, "--to", replica, check=False)
    finally:
        psql(replica, "select pg_wal_replay_resume()")
        portal(primary, "drop table if exists drill_lag")
    assert code == 1 and f"{replica} replays" in output and "over its lag threshold (10 MB)" in output


def test_switchover_while_a_restore_runs_is_refused(unchanged):
    primary, replicas = roles()
    # What the check looks for: a point-in-time restore's process (restore.py runs mcp-base-backup restore).
    on(replicas[-1], "systemd-run --unit drill-restore -p Type=exec /bin/bash -c "
                     f"'exec -a \"/usr/bin/python3 -Iu {layout.program('base-backup')} restore\" sleep 120'")
    try:
        code, output = mcp_ha("switchover", LOCAL, "--to", replicas[0], check=False)
    finally:
        on(replicas[-1], "systemctl stop drill-restore")
    assert code == 1 and f"{replicas[-1]} is running a point-in-time restore" in output


def test_failover_while_the_primary_is_up_is_refused(unchanged):
    code, output = mcp_ha("failover", LOCAL, check=False)
    assert code == 1 and f"{roles()[0]} is up and a primary: nothing to fail over" in output


def test_switchover_under_load_fails_no_transaction_and_loses_no_row():
    old, (target, *others) = roles()
    with WriteLoad() as load:
        load.wait_for(200)
        code, output = mcp_ha("switchover", LOCAL, "--to", target)
        seen = len(load.acknowledged)
        load.wait_for(seen + 200)  # and writes go on, on the new primary
    assert load.failures == []
    assert roles() == (target, sorted([old, *others]))
    assert psql(target, "select pg_is_in_recovery()") == "f"
    acknowledged = set(load.acknowledged)
    assert present(target, acknowledged) == acknowledged
    eventually(lambda: streaming_from(target, [old, *others]), timeout=60)
    held = float(output.split("clients were held ")[1].split(" s")[0])
    print(f"switchover {old} -> {target}: {len(acknowledged)} rows acknowledged, none lost, 0 failed; "
          f"clients held {held} s")
    no_drift()


def lose_primary_and_fail_over(load, how, inventory=LOCAL):
    """Lose the primary mid-load (`how`: cut it off the network, or kill its PostgreSQL), fail over; (old primary,
    new primary, where the old timeline ended, mcp-ha's output)."""
    old, replicas = roles()
    load.wait_for(300)
    undo = {"cut": lambda: fleet("heal", old),
            "kill": lambda: on(old, "rm -f /var/lib/mcp-portal/fenced && systemctl start postgresql@17-main")}[how]
    if how == "cut":
        fleet("cut", old)
    else:  # the postmaster and every backend at once, as a crash would
        on(old, "systemctl kill -s KILL postgresql@17-main")
    try:
        code, output = mcp_ha("failover", inventory)
    except AssertionError:
        undo()  # nothing was promoted: the old primary is the primary again
        raise
    new, _ = roles()
    assert new in replicas and new != old
    switch = on(new, "runuser -u postgres -- sh -c 'cat $(ls /var/lib/postgresql/17/main/pg_wal/*.history | tail -1)'").stdout
    ended = lsn(switch.strip().splitlines()[-1].split()[1])
    return old, new, ended, output


def fenced_then_rejoined(old, new, ended, inventory=LOCAL, cut=True):
    """The old primary is fenced (cut off: by itself, within the bound once back on the network; killed: by the
    failover), its archiver refuses what it wrote past the switch, it cannot be started as a primary, and the
    deploy rejoins it as a standby. Returns how long it took to fence itself (None when the failover did)."""
    took = None
    if cut:
        started = time.monotonic()
        fleet("heal", old)
        eventually(lambda: on(old, "systemctl is-active postgresql@17-main", check=False).stdout.strip() != "active",
                   timeout=FENCE_BOUND_S)
        took = time.monotonic() - started
    assert "fenced since" in on(old, f"{layout.program('fence')} may-start", check=False).stderr
    assert "mcp_fenced_timestamp_seconds" in on(old, f"cat {FENCE_METRIC}").stdout  # MCPPostgresFenced fires
    assert on(old, "systemctl start postgresql@17-main", check=False).returncode != 0  # never again as a primary
    parent = switch_timeline(new) - 1
    diverged = [name for name in on(old, "ls /var/lib/postgresql/17/main/pg_wal").stdout.split()
                if SEGMENT.match(name) and timeline_of(name) == parent and segment_end(name) > ended]
    pushed = on(old, f"runuser -u postgres -- {layout.program('wal-archive')} push "
                     f"/var/lib/postgresql/17/main/pg_wal/{diverged[0]} {diverged[0]}", check=False)
    assert pushed.returncode == 1 and "must not archive" in pushed.stderr
    output = deploy_with(inventory)
    assert f"Rejoin as a standby of {new}" in output
    replicas = roles()[1]
    eventually(lambda: streaming_from(new, replicas), timeout=60)
    assert on(old, f"test -e /var/lib/mcp-portal/fenced || test -e {FENCE_METRIC}", check=False).returncode == 1
    no_drift(inventory)
    return took


def switch_timeline(host):
    return int(psql(host, "select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"), 16)


def test_failover_without_synchronous_replication_loses_at_most_what_the_replica_had_not_received():
    with WriteLoad() as load:
        old, new, ended, output = lose_primary_and_fail_over(load, "cut")
        try:
            load.wait_for(len(load.acknowledged) + 100)  # writes go on through PgBouncer, on the new primary
            acknowledged = load.stop()
            kept = present(new, acknowledged)
            lost = set(acknowledged) - kept
            # Every commit that ended at or before the switch is there; what was lost was written after it.
            assert all(lsn(acknowledged[r]) > ended for r in lost if acknowledged[r])
            assert all(r in kept for r, at in acknowledged.items() if at and lsn(at) <= ended)
            print(f"failover (asynchronous) {old} -> {new}: {len(acknowledged)} rows acknowledged, {len(lost)} lost "
                  f"(all written after the switch at {ended:X}); {len(load.failures)} client errors")
            took = fenced_then_rejoined(old, new, ended)
        finally:
            fleet("heal", old)
    print(f"{old} fenced itself {took:.1f} s after it was back on the network (bound {FENCE_BOUND_S} s)")


def test_failover_with_synchronous_replication_loses_no_row_the_clients_saw_committed(tmp_path):
    """The primary's PostgreSQL killed mid-load (its host stays up: the failover fences it at once)."""
    inventory = synchronous_inventory(tmp_path)
    deploy_with(inventory)
    try:
        primary, _ = roles()
        eventually(lambda: psql(primary, "select string_agg(sync_state, ',') from pg_stat_replication") == "quorum,quorum")
        with WriteLoad() as load:
            old, new, ended, output = lose_primary_and_fail_over(load, "kill", inventory)
            load.wait_for(len(load.acknowledged) + 100)  # commits go on: the other replica acknowledges them
            acknowledged = load.stop()
        kept = present(new, acknowledged)
        assert kept == set(acknowledged)
        print(f"failover (synchronous) {old} -> {new}: {len(acknowledged)} rows acknowledged, all present; "
              f"{len(load.failures)} client errors")
        fenced_then_rejoined(old, new, ended, inventory, cut=False)
    finally:
        deploy()  # synchronous replication off again, as the fleet's group_data says
    assert psql(roles()[0], "show synchronous_standby_names") == ""


def test_a_replica_rebuilt_from_the_newest_backup_replays_the_archive_across_the_drills_promotions():
    primary, replicas = roles()
    replica, datadir = replicas[-1], "/var/lib/postgresql/17/main"
    program = layout.program("base-backup")
    newest = json.loads(on(primary, f"runuser -u postgres -- {program} list").stdout.splitlines()[-1])
    written = portal(primary, f"insert into public.{TABLE} default values returning id").splitlines()[0]
    on(replica, f"systemctl stop postgresql@17-main && mv {datadir} {datadir}.broken")
    try:
        on(replica, f"runuser -u postgres -- {program} restore --standby {datadir}", timeout=600)
        on(replica, "systemctl start postgresql@17-main")
        eventually(lambda: streaming_from(primary, replicas), timeout=180)
        eventually(lambda: portal(replica, f"select count(*) from public.{TABLE} where id = {written}") == "1")
    except AssertionError:
        on(replica, f"systemctl stop postgresql@17-main; rm -rf {datadir} && mv {datadir}.broken {datadir} && "
                    "systemctl start postgresql@17-main")
        raise
    on(replica, f"rm -rf {datadir}.broken")
    print(f"{replica} rebuilt from backup {newest['id']} (WAL from {newest['start_lsn']}), now on timeline "
          f"{switch_timeline(primary)} with the primary")
    no_drift()
