"""Replication under Patroni, checked from both ends: each replica streams over verified TLS through the slot
Patroni keeps for it on the leader, its lag is under the threshold its purpose sets (/etc/mcp-portal/member.json,
written by the deploy), and synchronous standbys, if any, are in the quorum."""

import json

import pytest

from tests.infra.test_postgres import psql


def member_record(target):
    return json.loads(target.host.file("/etc/mcp-portal/member.json").content_string)


def leader_of(targets, members):
    return targets[next(name for name, m in members.items() if m["role"] == "leader")]


def test_replica_is_in_recovery_and_streaming_over_verified_tls(replica_target, targets, members):
    host = replica_target.host
    assert psql(host, "select pg_is_in_recovery()") == "t"
    status, conninfo = psql(host, "select status || '|' || conninfo from pg_stat_wal_receiver").split("|", 1)
    assert status == "streaming" and "sslmode=verify-full" in conninfo
    assert psql(leader_of(targets, members).host, "select s.ssl from pg_stat_ssl s join pg_stat_replication r using "
                f"(pid) where r.application_name = '{replica_target.name}'") == "t"


def test_replica_uses_its_own_slot_and_it_is_active_on_the_leader(replica_target, targets, members):
    slot = member_record(replica_target)["slot"]
    assert psql(replica_target.host, "show primary_slot_name") == slot
    assert psql(leader_of(targets, members).host, f"select active from pg_replication_slots where slot_name = '{slot}'") == "t"


def test_replica_lag_is_under_its_threshold(replica_target, targets, members):
    record = member_record(replica_target)
    lag = psql(leader_of(targets, members).host, "select coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), -1) "
               f"from pg_stat_replication where application_name = '{replica_target.name}'")
    assert lag and 0 <= float(lag) < record["lag_threshold_mb"] * 1024 * 1024, f"lag {lag} bytes"


def test_the_leader_is_not_in_recovery_and_keeps_a_slot_per_other_member(primary_target, targets):
    others = [t for t in targets.values() if "database" in t.groups and t.name != primary_target.name]
    assert psql(primary_target.host, "select pg_is_in_recovery()") == "f"
    slots = psql(primary_target.host, "select string_agg(slot_name, ',' order by slot_name) from pg_replication_slots")
    assert sorted(slots.split(",")) == sorted(member_record(t)["slot"] for t in others)


def test_synchronous_standbys_if_any_are_streaming_in_the_quorum(primary_target):
    names = psql(primary_target.host, "show synchronous_standby_names")
    if not names:
        pytest.skip("synchronous_replication is off")
    listed = names.split("(", 1)[1].rstrip(")").replace('"', "").split(",")
    states = psql(primary_target.host, "select string_agg(application_name || '=' || sync_state, ',') from pg_stat_replication")
    assert sorted(s for s in states.split(",") if s.split("=")[0] in listed) == sorted(f"{n}=quorum" for n in listed)
