"""The portal's schema and its jobs, after any deploy: every change of sql/sqitch.plan deployed on the primary,
tenant tables under FORCEd row-level security, the app without a way around it, audit partitions ahead, the
jobs' timers armed on every database host, and the encryption's data key and configuration in place."""

from deploys.schema import JOBS, PROJECT, plan_changes
from tests.infra.test_postgres import psql

TENANT_TABLES = ("users", "mcp_servers", "user_server_configs", "user_sessions", "audit_logs", "audit_changes",
                 "audit_logs_archive", "audit_changes_archive")


def test_every_planned_change_is_deployed_in_order(primary_target):
    deployed = psql(primary_target.host, f"select string_agg(change, ' ' order by committed_at) from sqitch.changes "
                                         f"where project = '{PROJECT}'", database="portal")
    assert deployed.split() == plan_changes()


def test_tenant_tables_have_forced_rls_and_the_app_cannot_bypass_it(primary_target):
    tables = ", ".join(f"'portal.{table}'::regclass" for table in TENANT_TABLES)
    forced = psql(primary_target.host, f"select count(*) from pg_class where oid in ({tables}) "
                                       "and relrowsecurity and relforcerowsecurity", database="portal")
    assert int(forced) == len(TENANT_TABLES)
    assert psql(primary_target.host, "select rolbypassrls or rolsuper from pg_roles where rolname = 'portal_app'") == "f"


def test_audit_partitions_reach_past_the_minimum_horizon(primary_target):
    assert int(psql(primary_target.host, "select portal.audit_partition_horizon()", database="portal")) >= 2


def test_the_jobs_timers_are_armed_and_their_last_runs_did_not_fail(db_target):
    host = db_target.host
    for unit in JOBS:
        assert host.service(f"{unit}.timer").is_running and host.service(f"{unit}.timer").is_enabled
        assert host.check_output(f"systemctl show -P Result {unit}.service") == "success"


def test_a_data_key_is_active_and_the_rotation_config_is_for_postgres_only(primary_target, db_target):
    assert psql(primary_target.host, "select count(*) from portal.encryption_keys where is_active",
                database="portal") == "1"
    config = db_target.host.file("/etc/mcp-portal/key-rotation.json")
    assert (config.user, config.mode) == ("postgres", 0o600)
