"""Settings changes on the fleet, carried out through Patroni: reload for reload-class settings, restarts in order for
postmaster ones, bad values refused before any host changes. Overrides go in an extra group data dir (pyinfra
--group-data). pg-1 leads (tests/e2e/conftest.py)."""

import pytest

from tests.e2e.test_deploy import changed_operations, deploy, grand_total, planned_changes, pyinfra_run
from tests.fleet_helpers import DATABASE, on

DATABASE_HOSTS = DATABASE
LEADER, REPLICAS = DATABASE[0], DATABASE[1:]
CONF = "/etc/postgresql/17/main/mcp-portal.conf"


def psql(host, sql):
    return on(host, f"runuser -u postgres -- psql -XtAc \"{sql}\"").stdout.strip()


def started():
    """Each database host's postmaster start time, as epoch seconds with microseconds."""
    return {h: float(psql(h, "select extract(epoch from pg_postmaster_start_time())")) for h in DATABASE_HOSTS}


@pytest.fixture
def refused(tmp_path):
    """Write group data overrides that the deploy refuses: nothing to converge back from (each test checks)."""
    def write(text):
        (tmp_path / "local.py").write_text(text)  # the fleet's own group: overrides group_data/local.py
        return ["--group-data", str(tmp_path)]
    return write


@pytest.fixture
def overrides(refused):
    """Write group data overrides that the deploy applies; the deploy after the test runs without them, converging
    back."""
    yield refused
    deploy()


def test_reload_class_change_reloads_without_restart(overrides):
    before = started()
    output = deploy(*overrides('postgres_settings = {"log_min_duration_statement": "250ms"}'))
    assert "Patroni reloads (log_min_duration_statement changed)" in output and "Restart PostgreSQL" not in output
    assert {h: psql(h, "show log_min_duration_statement") for h in DATABASE_HOSTS} == dict.fromkeys(DATABASE_HOSTS, "250ms")
    assert started() == before


def test_restart_class_change_restarts_replicas_one_at_a_time_then_the_leader(overrides):
    before = started()
    output = deploy(*overrides("postgres_memory_budget_mb = 768"))
    assert "Restart PostgreSQL through Patroni (replica; shared_buffers need a restart)" in output
    after = started()
    assert all(after[h] > before[h] for h in DATABASE_HOSTS)
    assert all(after[LEADER] > after[r] for r in REPLICAS)
    assert {h: psql(h, "show shared_buffers") for h in DATABASE_HOSTS} == dict.fromkeys(DATABASE_HOSTS, "192MB")
    assert grand_total(deploy(*overrides("postgres_memory_budget_mb = 768")))[1] == 0


def test_decreased_hot_standby_setting_restarts_the_leader_first(overrides):
    # max_locks_per_transaction is one of the parameters Patroni takes from etcd only: the deploy writes it there.
    deploy(*overrides('postgres_settings = {"max_locks_per_transaction": 128}'))
    assert {h: psql(h, "show max_locks_per_transaction") for h in DATABASE_HOSTS} == dict.fromkeys(DATABASE_HOSTS, "128")
    before = started()
    output = deploy(*overrides('postgres_settings = {"max_locks_per_transaction": 64}'))
    assert "Restart PostgreSQL through Patroni (leader first, max_locks_per_transaction decreased" in output
    after = started()
    assert all(after[LEADER] < after[r] for r in REPLICAS)
    assert after[LEADER] > before[LEADER]
    assert {h: psql(h, "show max_locks_per_transaction") for h in DATABASE_HOSTS} == dict.fromkeys(DATABASE_HOSTS, "64")
    assert grand_total(deploy(*overrides('postgres_settings = {"max_locks_per_transaction": 64}')))[1] == 0


def test_bad_value_is_refused_before_any_host_changes(refused):
    before = {h: on(h, f"md5sum {CONF}").stdout for h in DATABASE_HOSTS}
    result = pyinfra_run("-y", *refused('postgres_settings = {"work_mem": "12XB", "log_min_duration_statement": "1s"}'))
    assert result.returncode != 0
    assert "group_data/local.py: postgres_settings: work_mem = '12XB': unit 'XB'" in result.stderr + result.stdout
    assert {h: on(h, f"md5sum {CONF}").stdout for h in DATABASE_HOSTS} == before


def test_slot_retention_the_wal_volume_cannot_hold_is_refused(refused):
    before = {h: on(h, f"md5sum {CONF}").stdout for h in DATABASE_HOSTS}
    result = pyinfra_run("-y", *refused('postgres_settings = {"max_slot_wal_keep_size": "100TB"}'))
    assert result.returncode != 0
    assert "the WAL volume (/var/lib/postgresql/17/main/pg_wal) has" in result.stdout + result.stderr
    assert "lower max_slot_wal_keep_size" in result.stdout + result.stderr
    assert {h: on(h, f"md5sum {CONF}").stdout for h in DATABASE_HOSTS} == before


def test_dry_run_after_a_group_data_edit_lists_what_the_real_run_then_changes(overrides):
    edit = overrides('postgres_settings = {"log_min_duration_statement": "300ms"}\nheartbeat_interval_s = 15')
    planned = {op: int(change.split()[0]) for op, (change, _) in planned_changes(*edit).items() if change != "-"}
    assert planned == {
        "Patroni | Render the settings Patroni's postgresql.conf includes": 3,
        "Patroni | Patroni reloads (log_min_duration_statement changed)": 3,
        "Heartbeat writer | Heartbeat timer": 2,
        "Heartbeat writer | Reload systemd units": 2,
        "Heartbeat writer | Heartbeat timer runs and starts at boot": 2,
    }
    assert changed_operations(deploy(*edit)) == planned
    assert "OnCalendar=*:*:0/15" in on("pgbouncer-1", "systemctl cat mcp-heartbeat.timer").stdout


def test_a_connection_budget_max_connections_cannot_hold_is_refused(refused):
    before = {h: on(h, f"md5sum {CONF}").stdout for h in DATABASE_HOSTS}
    result = pyinfra_run("-y", *refused("postgres_max_connections = 100"))
    assert result.returncode != 0
    assert ("group_data/local.py: postgres_max_connections: max_connections 100 is below the connection budget 142 "
            "(PgBouncer pgbouncer-1 62 + PgBouncer pgbouncer-2 62 + monitoring (direct) 5 + jobs (direct) 5 + "
            "operators (direct) 5 + superuser_reserved_connections 3 + reserved_connections 0)") in result.stdout + result.stderr
    assert {h: on(h, f"md5sum {CONF}").stdout for h in DATABASE_HOSTS} == before
