"""postgresql.conf as data: sizing, validation against PostgreSQL 17's catalogue, change detection, restart plans."""

import re

import pytest

from deploys.knobs import HbaRule
from deploys.pgconfig import (TIER_SETTINGS, ConfigError, catalogue, changes, connection_budget, hba_rules,
                              memory_sizing, normalize, restart_plan, settings, validate)

KNOWN = catalogue()


@pytest.mark.parametrize(
    "budget_mb, expected",
    [
        (256, {"shared_buffers": "64MB", "effective_cache_size": "192MB", "maintenance_work_mem": "16MB", "work_mem": "1MB"}),
        (1024, {"shared_buffers": "256MB", "effective_cache_size": "768MB", "maintenance_work_mem": "64MB", "work_mem": "3MB"}),
        (16384, {"shared_buffers": "4096MB", "effective_cache_size": "12288MB", "maintenance_work_mem": "1024MB", "work_mem": "56MB"}),
        (65536, {"shared_buffers": "16384MB", "effective_cache_size": "49152MB", "maintenance_work_mem": "2048MB", "work_mem": "235MB"}),
    ],
)
def test_memory_sizing_follows_the_budget(budget_mb, expected):
    assert memory_sizing(budget_mb, max_connections=100) == expected


def test_sizing_never_exceeds_the_budget_when_every_connection_sorts_twice():
    for budget in (256, 512, 1000, 4096, 100_000):
        for connections in (20, 100, 500):
            sized = {k: int(v[:-2]) for k, v in memory_sizing(budget, connections).items()}
            worst = sized["shared_buffers"] + sized["maintenance_work_mem"] + 2 * connections * sized["work_mem"]
            assert worst <= budget or sized["work_mem"] == 1


def test_tiny_budget_is_refused():
    with pytest.raises(ConfigError, match="256 MB"):
        memory_sizing(128, 100)


@pytest.mark.parametrize(
    "name, value, normalized",
    [
        ("shared_buffers", "128MB", "16384"),  # 8kB pages
        ("shared_buffers", "1GB", "131072"),
        ("log_min_duration_statement", "0.5s", "500"),
        ("idle_in_transaction_session_timeout", "1min", "60000"),
        ("max_slot_wal_keep_size", "10GB", "10240"),  # MB
        ("hot_standby", "true", "on"),
        ("wal_level", "REPLICA", "replica"),
        ("ssl_min_protocol_version", "TLSv1.3", "tlsv1.3"),
        ("checkpoint_completion_target", "0.9", "0.9"),
    ],
)
def test_values_normalize_to_pg_settings_units(name, value, normalized):
    assert normalize(name, value, KNOWN[name]) == normalized


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"shared_bufers": "1GB"}, "shared_bufers is not a PostgreSQL 17 parameter (did you mean shared_buffers"),
        ({"work_mem": "12XB"}, "work_mem = '12XB': unit 'XB' is not one of B, kB, MB, GB, TB"),
        ({"work_mem": "lots"}, "work_mem = 'lots' is not a number"),
        ({"max_connections": 0}, "max_connections = 0 is out of range (1..262143)"),
        ({"wal_level": "archive"}, "wal_level = 'archive' is not one of minimal, replica, logical"),
        ({"fsync": "maybe"}, "fsync = 'maybe' is not a boolean"),
        ({"max_connections": "100ms"}, "max_connections = '100ms' takes no unit"),
        ({"port": 5433}, "port is set by the deploy itself"),
    ],
)
def test_bad_settings_are_one_line_naming_the_parameter(overrides, message):
    with pytest.raises(ConfigError) as raised:
        validate(overrides)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_names_are_case_insensitive_and_extension_parameters_pass():
    assert validate({"TimeZone": "UTC", "pg_stat_statements.max": 5000}) == {"TimeZone": "UTC", "pg_stat_statements.max": "5000"}


def test_the_tiers_own_settings_are_valid():
    validate(TIER_SETTINGS)


def test_settings_merge_the_tiers_sizing_overrides_and_what_other_components_add():
    values = settings(2048, 100, {"work_mem": "16MB"}, {"archive_mode": "on"})
    assert values["shared_buffers"] == "512MB" and values["work_mem"] == "16MB" and values["archive_mode"] == "on"
    assert values["allow_alter_system"] == "off" and values["wal_level"] == "replica"
    with pytest.raises(ConfigError, match="^archive_mode = 'sometimes'"):
        settings(1024, 100, {}, {"archive_mode": "sometimes"})  # another component's settings are checked too


def live(**values):
    return {name: {"setting": setting, "context": KNOWN[name.lower()]["context"], "source": "configuration file",
                   "pending_restart": False} for name, setting in values.items()}


def test_changes_compare_in_pg_settings_units_and_report_contexts():
    on_host = live(shared_buffers="16384", work_mem="4096", TimeZone="Etc/UTC")
    assert changes({"shared_buffers": "128MB", "work_mem": "4MB", "timezone": "Etc/UTC"}, on_host) == {}
    assert changes({"shared_buffers": "256MB", "work_mem": "8MB", "TimeZone": "Etc/UTC"}, on_host) == {"shared_buffers": "postmaster", "work_mem": "user"}


def test_a_parameter_missing_on_the_host_is_a_change():
    assert changes({"work_mem": "4MB"}, {}) == {"work_mem": "user"}


def test_hba_rules_from_the_inventory_are_tls_and_scram():
    rules = hba_rules(["198.51.100.12"], ["198.51.100.21"], "replicator", [])
    assert rules == [("local", "replication", "replicator", "", "scram-sha-256"),
                     ("hostssl", "replication", "replicator", "198.51.100.12/32", "scram-sha-256"),
                     ("hostssl", "postgres", "replicator", "198.51.100.12/32", "scram-sha-256"),
                     ("hostssl", "all", "all", "198.51.100.21/32", "scram-sha-256")]


def test_an_extra_admin_network_rule_is_kept():
    rule = HbaRule(database="all", user="dba", address="10.20.0.0/24", method="cert")
    assert hba_rules([], [], "replicator", [rule])[-1] == ("hostssl", "all", "dba", "10.20.0.0/24", "cert")


def test_a_parameter_the_file_no_longer_sets_is_a_change_back_to_its_default():
    on_host = live(work_mem="4096", max_locks_per_transaction="128") | {
        "port": {"setting": "5432", "context": "postmaster", "source": "configuration file", "pending_restart": False},
        "shared_buffers": {"setting": "16384", "context": "postmaster", "source": "default", "pending_restart": False}}
    assert changes({"work_mem": "4MB"}, on_host) == {"max_locks_per_transaction": "postmaster"}


def budget(desired=None, pooled=None, direct=None, standbys=2, streams=2):
    desired = {"max_connections": 100, "max_wal_senders": 10, "max_replication_slots": 10, **(desired or {})}
    connection_budget(desired, {"pgbouncer-1": 32} if pooled is None else pooled,
                      {"monitoring": 5, "jobs": 5, "operators": 5} if direct is None else direct,
                      standbys, streams)


def test_the_defaults_fit_with_room_for_a_second_pooler():
    budget()  # 32 + 15 + superuser_reserved_connections 3 = 50 of 100
    budget(pooled={"pgbouncer-1": 32, "pgbouncer-2": 32})  # 82
    budget(desired={"max_connections": 50})  # exactly full


def test_an_over_budget_host_is_refused_with_every_term_named():
    with pytest.raises(ConfigError) as raised:
        budget(desired={"max_connections": 49, "reserved_connections": 2})
    message = str(raised.value)
    assert message.startswith("postgres_max_connections: max_connections 49 is below the connection budget 52 ")
    assert ("(PgBouncer pgbouncer-1 32 + monitoring (direct) 5 + jobs (direct) 5 + operators (direct) 5 + "
            "superuser_reserved_connections 3 + reserved_connections 2)") in message
    assert "pgbouncer_pool.max_db_connections" in message and "\n" not in message


@pytest.mark.parametrize(
    "desired, standbys, streams, message",
    [
        ({"max_wal_senders": 5}, 2, 2, "postgres_settings: max_wal_senders 5 is below the 6 that 2 standby(s) and 2 concurrent"),
        ({"max_wal_senders": 10}, 9, 1, "max_wal_senders 10 is below the 11 that 9 standby(s)"),
        ({"max_replication_slots": 3}, 2, 2, "max_replication_slots 3 is below the 4 that"),
    ],
)
def test_wal_senders_and_slots_count_two_per_streaming_backup(desired, standbys, streams, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        budget(desired=desired, standbys=standbys, streams=streams)


def pg_settings(**values):
    """A running cluster's pg_settings rows: (setting, boot_val) per parameter; its context from the catalogue."""
    return {name: {"setting": str(setting), "boot_val": str(boot), "context": KNOWN[name]["context"],
                   "source": "configuration file", "pending_restart": False} for name, (setting, boot) in values.items()}


LIVE = pg_settings(max_locks_per_transaction=(128, 64), work_mem=(4096, 4096), shared_buffers=(16384, 16384))


@pytest.mark.parametrize("desired, primary, turn, restart_for, decreased, reload", [
    ({"max_locks_per_transaction": 128, "work_mem": "4MB", "shared_buffers": "128MB"}, True, None, [], {}, False),
    ({"max_locks_per_transaction": 128, "work_mem": "8MB", "shared_buffers": "128MB"}, True, None, [], {}, True),
    ({"max_locks_per_transaction": 128, "work_mem": "4MB", "shared_buffers": "256MB"}, False, "replica", ["shared_buffers"], {}, False),
    ({"max_locks_per_transaction": 128, "work_mem": "4MB", "shared_buffers": "256MB"}, True, "primary last", ["shared_buffers"], {}, False),
    # Lowered: the primary goes first, and the replicas wait to replay the new value before they restart.
    ({"max_locks_per_transaction": 64, "work_mem": "4MB", "shared_buffers": "128MB"}, True, "primary first",
     ["max_locks_per_transaction"], {"max_locks_per_transaction": "64"}, False),
    ({"max_locks_per_transaction": 64, "work_mem": "4MB", "shared_buffers": "128MB"}, False, "replica",
     ["max_locks_per_transaction"], {"max_locks_per_transaction": "64"}, False),
    # No longer set: back to its default (boot_val 64), which is a decrease too.
    ({"work_mem": "4MB", "shared_buffers": "128MB"}, True, "primary first", ["max_locks_per_transaction"],
     {"max_locks_per_transaction": "64"}, False),
])
def test_the_restart_plan_follows_the_parameters_context_and_direction(desired, primary, turn, restart_for, decreased,
                                                                        reload):
    plan = restart_plan(desired, LIVE, primary, down=False)
    assert (plan.turn, plan.restart_for, plan.decreased, plan.reload) == (turn, restart_for, decreased, reload)


def test_a_pending_restart_is_carried_out_and_another_file_only_reloads():
    pending = {**LIVE, "shared_buffers": {**LIVE["shared_buffers"], "pending_restart": True}}
    same = {"max_locks_per_transaction": 128, "work_mem": "4MB", "shared_buffers": "128MB"}
    assert restart_plan(same, pending, True, down=False).restart_for == ["shared_buffers"]
    assert restart_plan(same, LIVE, True, down=False, reload_reasons=["pg_hba.conf"]).reload


def test_a_stopped_cluster_is_neither_restarted_nor_reloaded():
    plan = restart_plan({"shared_buffers": "1GB"}, {}, True, down=True, reload_reasons=["pg_hba.conf"])
    assert (plan.turn, plan.reload, plan.changed) == (None, False, {})
