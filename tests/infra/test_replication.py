"""Replication, checked from both ends: each replica streams over verified TLS through its own slot, and its
lag is under the threshold its purpose sets (/etc/mcp-portal/replica.json, written by the deploy)."""

import json

import pytest

from tests.infra.test_postgres import psql


def replica_record(replica_target):
    return json.loads(replica_target.host.file("/etc/mcp-portal/replica.json").content_string)


def test_replica_is_in_recovery_and_streaming_over_verified_tls(replica_target, targets):
    host = replica_target.host
    assert psql(host, "select pg_is_in_recovery()") == "t"
    status, conninfo = psql(host, "select status || '|' || conninfo from pg_stat_wal_receiver").split("|", 1)
    assert status == "streaming" and "sslmode=verify-full" in conninfo
    record = replica_record(replica_target)
    assert psql(targets[record["primary"]].host, "select s.ssl from pg_stat_ssl s join pg_stat_replication r using (pid) "
                f"where r.application_name = '{record['slot']}'") == "t"


def test_replica_uses_its_own_slot_and_it_is_active_on_the_primary(replica_target, targets):
    record = replica_record(replica_target)
    assert psql(replica_target.host, "show primary_slot_name") == record["slot"]
    primary = targets[record["primary"]]
    assert psql(primary.host, f"select active from pg_replication_slots where slot_name = '{record['slot']}'") == "t"


def test_replica_lag_is_under_its_threshold(replica_target, targets):
    record = replica_record(replica_target)
    primary = targets[record["primary"]]
    lag = psql(primary.host, "select coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), -1) "
               f"from pg_stat_replication where application_name = '{record['slot']}'")
    assert lag and 0 <= float(lag) < record["lag_threshold_mb"] * 1024 * 1024, f"lag {lag} bytes"


def test_primary_is_not_in_recovery_and_has_a_slot_per_replica(primary_target, targets):
    replicas = [t for t in targets.values() if "replicas" in t.groups]
    assert psql(primary_target.host, "select pg_is_in_recovery()") == "f"
    slots = psql(primary_target.host, "select string_agg(slot_name, ',' order by slot_name) from pg_replication_slots").split(",")
    assert sorted(slots) == sorted(replica_record(r)["slot"] for r in replicas)


def test_synchronous_standbys_if_any_are_streaming_in_the_quorum(primary_target):
    names = psql(primary_target.host, "show synchronous_standby_names")
    if not names:
        pytest.skip("synchronous_replication is off")
    listed = names.split("(", 1)[1].rstrip(")").replace(" ", "").split(",")
    states = psql(primary_target.host, "select string_agg(application_name || '=' || sync_state, ',') from pg_stat_replication")
    assert sorted(s for s in states.split(",") if s.split("=")[0] in listed) == sorted(f"{n}=quorum" for n in listed)
