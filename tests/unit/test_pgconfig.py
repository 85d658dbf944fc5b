"""postgresql.conf as data: sizing, validation against PostgreSQL 17's catalogue, change detection."""

import re

import pytest

from deploys.pgconfig import (ConfigError, catalogue, changes, connection_budget, hba_rules, memory_sizing, normalize,
                               settings, validate)
from deploys.postgres import DEFAULTS

KNOWN = catalogue()


class Data(dict):
    """Attribute access like pyinfra's host.data."""

    __getattr__ = dict.__getitem__


def host_data(**overrides):
    return Data(DEFAULTS, **overrides)


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
    assert normalize(name, value, KNOWN[name], "t") == normalized


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"shared_bufers": "1GB"}, "postgres_settings.shared_bufers is not a PostgreSQL 17 parameter (did you mean shared_buffers"),
        ({"work_mem": "12XB"}, "postgres_settings.work_mem = '12XB': unit 'XB' is not one of B, kB, MB, GB, TB"),
        ({"work_mem": "lots"}, "postgres_settings.work_mem = 'lots' is not a number"),
        ({"max_connections": 0}, "postgres_settings.max_connections = 0 is out of range (1..262143)"),
        ({"wal_level": "archive"}, "postgres_settings.wal_level = 'archive' is not one of minimal, replica, logical"),
        ({"fsync": "maybe"}, "postgres_settings.fsync = 'maybe' is not a boolean"),
        ({"max_connections": "100ms"}, "takes no unit"),
        ({"port": 5433}, "postgres_settings.port is set by the deploy itself"),
        (["work_mem"], "postgres_settings must be a mapping"),
    ],
)
def test_bad_settings_are_one_line_naming_file_and_key(overrides, message):
    with pytest.raises(ConfigError) as raised:
        validate(overrides, "group_data/primary.py")
    assert str(raised.value).startswith("group_data/primary.py: ")
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_names_are_case_insensitive_and_extension_parameters_pass():
    assert validate({"TimeZone": "UTC", "pg_stat_statements.max": 5000}, "t") == {"TimeZone": "UTC", "pg_stat_statements.max": "5000"}


def test_settings_merge_defaults_sizing_and_overrides():
    values = settings(host_data(postgres_memory_budget_mb=2048, postgres_settings={"work_mem": "16MB"}), lambda key: key)
    assert values["shared_buffers"] == "512MB" and values["work_mem"] == "16MB"
    assert values["allow_alter_system"] == "off" and values["wal_level"] == "replica"


def test_settings_name_where_the_bad_key_came_from():
    sources = {"postgres_settings": "group_data/replicas.py", "postgres_memory_budget_mb": "group_data/local.py"}
    with pytest.raises(ConfigError, match="^group_data/replicas.py: postgres_settings.bogus "):
        settings(host_data(postgres_settings={"bogus": 1}), sources.get)
    with pytest.raises(ConfigError, match="^group_data/local.py: .*256 MB"):
        settings(host_data(postgres_memory_budget_mb=100), sources.get)


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
    rules = hba_rules(["198.51.100.12"], ["198.51.100.21"], "replicator", [], "t")
    assert rules == [("hostssl", "replication", "replicator", "198.51.100.12/32", "scram-sha-256"),
                     ("hostssl", "postgres", "replicator", "198.51.100.12/32", "scram-sha-256"),
                     ("hostssl", "all", "all", "198.51.100.21/32", "scram-sha-256")]


@pytest.mark.parametrize(
    "extra, message",
    [
        ([{"database": "all", "user": "all", "address": "10.0.0.0/8", "method": "trust"}], "method 'trust' is not allowed"),
        ([{"database": "all", "user": "all", "address": "10.0.0.1/8"}], "address '10.0.0.1/8' is not a network"),
        ([{"database": "all", "address": "10.0.0.0/8"}], "needs database, user and address"),
        ({"database": "all"}, "postgres_hba_extra must be a list"),
    ],
)
def test_bad_hba_rules_are_refused(extra, message):
    with pytest.raises(ConfigError, match=message):
        hba_rules([], [], "replicator", extra, "group_data/prod.py")


def test_an_extra_admin_network_rule_is_kept():
    rule = {"database": "all", "user": "dba", "address": "10.20.0.0/24", "method": "cert"}
    assert hba_rules([], [], "replicator", [rule], "t") == [("hostssl", "all", "dba", "10.20.0.0/24", "cert")]


def test_a_parameter_the_file_no_longer_sets_is_a_change_back_to_its_default():
    on_host = live(work_mem="4096", max_locks_per_transaction="128") | {
        "port": {"setting": "5432", "context": "postmaster", "source": "configuration file", "pending_restart": False},
        "shared_buffers": {"setting": "16384", "context": "postmaster", "source": "default", "pending_restart": False}}
    assert changes({"work_mem": "4MB"}, on_host) == {"max_locks_per_transaction": "postmaster"}


BUDGET_SOURCES = {"postgres_max_connections": "group_data/primary.py", "postgres_settings": "group_data/all.py",
                  "postgres_direct_connections": "group_data/local.py"}


def budget(desired=None, pooled=None, direct=None, standbys=2, streams=2):
    desired = {"max_connections": 100, "max_wal_senders": 10, "max_replication_slots": 10, **(desired or {})}
    connection_budget(desired, {"pgbouncer-1": 32} if pooled is None else pooled,
                      {"monitoring": 5, "jobs": 5, "operators": 5} if direct is None else direct,
                      standbys, streams, BUDGET_SOURCES.get)


def test_the_defaults_fit_with_room_for_a_second_pooler():
    budget()  # 32 + 15 + superuser_reserved_connections 3 = 50 of 100
    budget(pooled={"pgbouncer-1": 32, "pgbouncer-2": 32})  # 82
    budget(desired={"max_connections": 50})  # exactly full


def test_an_over_budget_host_is_refused_with_every_term_named():
    with pytest.raises(ConfigError) as raised:
        budget(desired={"max_connections": 49, "reserved_connections": 2})
    message = str(raised.value)
    assert message.startswith("group_data/primary.py: max_connections 49 is below the connection budget 52 ")
    assert ("(PgBouncer pgbouncer-1 32 + monitoring (direct) 5 + jobs (direct) 5 + operators (direct) 5 + "
            "superuser_reserved_connections 3 + reserved_connections 2)") in message
    assert "pgbouncer_pool.max_db_connections" in message and "\n" not in message


@pytest.mark.parametrize(
    "desired, standbys, streams, message",
    [
        ({"max_wal_senders": 5}, 2, 2, "group_data/all.py: max_wal_senders 5 is below the 6 that 2 standby(s) and 2 concurrent"),
        ({"max_wal_senders": 10}, 9, 1, "max_wal_senders 10 is below the 11 that 9 standby(s)"),
        ({"max_replication_slots": 3}, 2, 2, "max_replication_slots 3 is below the 4 that"),
    ],
)
def test_wal_senders_and_slots_count_two_per_streaming_backup(desired, standbys, streams, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        budget(desired=desired, standbys=standbys, streams=streams)


def test_direct_connections_must_be_counts():
    with pytest.raises(ConfigError, match=r"^group_data/local.py: postgres_direct_connections.jobs = 'five' must be"):
        budget(direct={"jobs": "five"})
