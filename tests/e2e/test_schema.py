"""The portal's schema on the fleet, as the app and the staff roles see it: sqitch deployed every change; tenants
are isolated by FORCEd row-level security through PgBouncer, with the tenant bound to the transaction that set
it; RLS alone is an index scan; staff roles see what they should and no more; the audit trail, its partitions
and their archiving; the migrations revert and redeploy, and wait only lock_timeout behind a long transaction."""

import base64
import json
import os
import time
import psycopg
import pytest

from deploys.schema import PROJECT, plan_changes, sqitch_command
from hostside import layout
from tests.e2e.test_pgbouncer import connect, password
from tests.e2e.test_replication import eventually
from tests.fleet_helpers import host_clock, logged, on

PRIMARY = "pg-1"
TAG = "e2e-schema"
BULK_USERS = 2000
SERVERS = 5
METRICS = "/var/lib/mcp-portal/metrics/audit_partitions.prom"
SETTING = "portal_tenant.user_id"  # extension/portal_tenant
DENIED = f'permission denied to set parameter "{SETTING}"'
REFUSED = f"{DENIED}|no tenant set for this transaction"


def as_postgres(sql, database="portal", check=True):
    return on(PRIMARY, f"runuser -u postgres -- psql -d {database} -XAtq -v ON_ERROR_STOP=1 <<'SQL'\n{sql}\nSQL",
              check=check)


def envelope(key_version=1, **changes):
    return json.dumps({"v": 1, "key_version": key_version, "nonce": base64.b64encode(os.urandom(12)).decode(),
                       "ciphertext": base64.b64encode(os.urandom(40)).decode(), **changes})


def forget_test_rows():
    as_postgres(f"delete from portal.users where azure_oid like '{TAG}-%';"
                f"delete from portal.mcp_servers where name like '{TAG}-%';")


@pytest.fixture(scope="module")
def tenants():
    """Two tenants with configs, an inactive user, and BULK_USERS more users with SERVERS configs each."""
    forget_test_rows()
    with connect("portal") as app:
        alice = app.execute("select portal.register_user(%s, %s, %s)", (f"{TAG}-alice", "alice@example.test", "Alice")).fetchone()[0]
        bob = app.execute("select portal.register_user(%s, %s, %s)", (f"{TAG}-bob", "bob@example.test", "Bob")).fetchone()[0]
    with connect("portal", role="portal_admin") as admin:
        admin.execute(f"insert into portal.mcp_servers (name, display_name) "
                      f"select '{TAG}-' || g, 'Server ' || g from generate_series(1, {SERVERS}) g")
        admin.execute(f"insert into portal.users (azure_oid, email, is_active) values ('{TAG}-gone', 'gone@example.test', false)")
        admin.execute(f"insert into portal.users (azure_oid, email) select '{TAG}-bulk-' || g, 'bulk' || g || '@example.test' "
                      f"from generate_series(1, {BULK_USERS}) g")
        admin.execute(f"""insert into portal.user_server_configs (user_id, server_id, enabled, container_state)
                          select u.id, s.id, u.azure_oid in ('{TAG}-alice', '{TAG}-bob') or random() < 0.5, 'running'
                            from portal.users u cross join portal.mcp_servers s
                           where u.azure_oid like '{TAG}-%' and u.is_active and s.name like '{TAG}-%'""")
        gone = admin.execute(f"select id from portal.users where azure_oid = '{TAG}-gone'").fetchone()[0]
    as_postgres("analyze portal.users, portal.user_server_configs")
    yield {"alice": alice, "bob": bob, "gone": gone}
    forget_test_rows()


def in_tenant(conn, tenant, sql, params=()):
    with conn.transaction():
        conn.execute("select portal.set_tenant(%s)", (tenant,))
        return conn.execute(sql, params).fetchall()


def test_sqitch_deployed_every_planned_change_and_verifies_them():
    with connect("portal", role="portal_admin") as admin:
        versions = [row[0] for row in admin.execute("select version from portal.migration_history order by applied_at")]
    assert versions == plan_changes()
    verify = on(PRIMARY, sqitch_command("17/main", "portal_owner", "5s", "portal", "verify"))
    assert "Verify successful" in verify.stdout


def test_the_app_owns_nothing_and_cannot_bypass_rls():
    owners = as_postgres("select distinct pg_get_userbyid(relowner) from pg_class "
                         "where relnamespace = 'portal'::regnamespace order by 1").stdout.split()
    assert owners == ["portal_definer", "portal_owner"]
    assert as_postgres("select rolbypassrls, rolsuper from pg_roles where rolname = 'portal_app'").stdout.strip() == "f|f"


def test_every_table_holding_portal_rows_has_forced_rls_and_partitions_are_closed_to_the_app():
    unprotected = as_postgres(
        "select relname from pg_class where relnamespace = 'portal'::regnamespace and relkind in ('r', 'p') "
        "and not relispartition and not (relrowsecurity and relforcerowsecurity) order by 1").stdout.split()
    assert unprotected == ["encryption_keys", "key_rotations", "retention_policies"]  # no tenant rows
    open_partitions = as_postgres(
        "select relname from pg_class where relnamespace = 'portal'::regnamespace and relispartition "
        "and has_table_privilege('portal_app', oid, 'select, insert, update, delete')").stdout.split()
    assert open_partitions == []


def test_security_definer_functions_pin_their_search_path():
    loose = as_postgres("select proname from pg_proc where pronamespace = 'portal'::regnamespace and prosecdef "
                        "and not coalesce(proconfig @> array['search_path=pg_catalog, pg_temp'], false)").stdout.split()
    assert loose == []


def test_without_a_tenant_the_app_reads_nothing_and_is_told_why(tenants):
    with connect("portal") as app, pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant set for this transaction"):
        app.execute("select count(*) from portal.user_server_configs")


def test_a_tenant_sees_and_changes_only_its_own_rows_through_pgbouncer(tenants):
    alice, bob = tenants["alice"], tenants["bob"]
    with connect("portal") as app:
        mine = in_tenant(app, alice, "select distinct user_id from portal.user_server_configs")
        assert mine == [(alice,)]
        assert in_tenant(app, alice, "select count(*) from portal.users") == [(1,)]
        assert in_tenant(app, alice, "update portal.user_server_configs set enabled = false where user_id = %s "
                                     "returning id", (bob,)) == []
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            in_tenant(app, alice, "insert into portal.user_server_configs (user_id, server_id) "
                                  "select %s, id from portal.mcp_servers limit 1 returning id", (bob,))
        assert in_tenant(app, bob, "select count(*) from portal.user_server_configs where enabled") == [(SERVERS,)]


def test_the_app_cannot_set_the_tenant_at_session_level_before_or_after_the_module_loads(tenants):
    # One session (psql on the primary), as PgBouncer hands one server connection from client to client. Before
    # the module is loaded into this backend its setting is a placeholder anyone may SET; loading it (the policy's
    # first call) drops the app's value with a warning. After, SET and set_config are refused outright.
    script = f"""
        set portal_tenant.user_id = '{tenants["alice"]}';
        select count(*) from portal.user_server_configs;
        begin;
        select portal.set_tenant('{tenants["alice"]}');
        select set_config('portal_tenant.user_id', current_setting('portal_tenant.user_id'), false);
        rollback;
        set portal_tenant.user_id = '{tenants["bob"]}';
        select 'left: ' || current_setting('portal_tenant.user_id');
        select count(*) from portal.user_server_configs;
    """
    session = on(PRIMARY, f"PGPASSWORD='{password('portal_app')}' psql 'host=127.0.0.1 dbname=portal user=portal_app "
                          f"sslmode=require' -XAtq <<'SQL'\n{script}\nSQL", check=False)
    assert session.stdout.splitlines() == [str(tenants["alice"]), "left: "], session.stdout  # no count answered
    assert session.stderr.count(DENIED) == 3, session.stderr
    assert session.stderr.count("no tenant set for this transaction") == 2, session.stderr


def test_a_tenant_set_outside_a_transaction_block_is_gone_by_the_next_statement(tenants):
    with connect("portal") as app:
        app.execute("select portal.set_tenant(%s)", (tenants["alice"],))
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no tenant set"):
            app.execute("select count(*) from portal.user_server_configs")


@pytest.mark.parametrize("who", ["alice", "gone"])
@pytest.mark.parametrize("setting", [SETTING, "portal.tenant"])
def test_a_tenant_written_by_hand_is_refused_for_an_active_or_a_deactivated_user(tenants, who, setting):
    # The audit's attack: set_config in the transaction, skipping set_tenant()'s check that the user is active; in
    # the module's setting and in the one the policies read before it. Refused when written, or, when this server
    # connection had not loaded the module yet, dropped as it loads and the query refused.
    refused = pytest.raises(psycopg.errors.InsufficientPrivilege, match=REFUSED)
    with connect("portal") as app, refused, app.transaction():
        app.execute("select set_config(%s, %s, true)", (setting, str(tenants[who])))
        app.execute("select count(*) from portal.user_server_configs")


def test_a_tenant_copied_from_another_transaction_or_connection_is_refused(tenants):
    with connect("portal") as first, connect("portal") as second:
        with first.transaction():
            first.execute("select portal.set_tenant(%s)", (tenants["alice"],))
            context = first.execute(f"select current_setting('{SETTING}')").fetchone()[0]
            # While that transaction is open its server connection is not the second client's.
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=REFUSED), second.transaction():
                second.execute("select set_config(%s, %s, true)", (SETTING, context))
                second.execute("select count(*) from portal.user_server_configs")
            assert first.execute("select count(*) from portal.user_server_configs").fetchone()[0] == SERVERS
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=REFUSED), first.transaction():
            first.execute("select set_config(%s, %s, true)", (SETTING, context))
            first.execute("select count(*) from portal.user_server_configs")


@pytest.mark.parametrize("statement", [
    "set local portal_tenant.user_id = '{alice}'",
    "alter role portal_app set portal_tenant.user_id = '{alice}'",
    "create function pg_temp.as_alice() returns int language sql set portal_tenant.user_id = '{alice}' return 1",
    "reset portal_tenant.user_id",
])
def test_once_loaded_no_statement_of_the_app_writes_the_tenant(tenants, statement):
    with connect("portal") as app, pytest.raises(psycopg.errors.InsufficientPrivilege, match=DENIED), app.transaction():
        app.execute("select portal.set_tenant(%s)", (tenants["bob"],))  # loads the module, if it was not
        app.execute(statement.format(alice=tenants["alice"]))


def test_a_user_deactivated_meanwhile_cannot_be_the_tenant_of_the_next_transaction(tenants):
    with connect("portal") as app, connect("portal", role="portal_admin") as admin:
        assert in_tenant(app, tenants["bob"], "select count(*) from portal.users") == [(1,)]
        admin.execute("update portal.users set is_active = false where id = %s", (tenants["bob"],))
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no active user"):
                in_tenant(app, tenants["bob"], "select count(*) from portal.users")
        finally:
            admin.execute("update portal.users set is_active = true where id = %s", (tenants["bob"],))
        assert in_tenant(app, tenants["bob"], "select count(*) from portal.users") == [(1,)]


def test_the_tenant_is_set_on_the_replicas_too(tenants):
    with connect("portal_ro") as replica:
        assert replica.execute("select pg_is_in_recovery()").fetchone()[0] is True
        eventually(lambda: in_tenant(replica, tenants["alice"], "select count(*) from portal.user_server_configs")
                   == [(SERVERS,)], timeout=10)


@pytest.mark.parametrize("who, error", [("gone", "no active user"), ("nobody", "no active user"),
                                        ("malformed", "invalid input syntax for type uuid")])
def test_inactive_unknown_and_malformed_tenants_are_refused(tenants, who, error):
    tenant = {"nobody": "00000000-0000-4000-8000-000000000000", "malformed": "' or 1=1 --"}.get(who) or tenants.get(who)
    with connect("portal") as app, pytest.raises(psycopg.Error, match=error):
        app.execute("select portal.set_tenant(%s)", (tenant,))


def test_a_query_relying_on_rls_alone_is_an_index_scan(tenants):
    with connect("portal") as app:
        plan = in_tenant(app, tenants["alice"], "explain (format json) select count(*) from portal.user_server_configs "
                                                "where enabled")[0][0]
        assert in_tenant(app, tenants["alice"], "select count(*) from portal.user_server_configs where enabled") == [(SERVERS,)]
    scans = []

    def walk(node):
        scans.append((node["Node Type"], node.get("Relation Name"), node.get("Index Name")))
        for child in node.get("Plans", []):
            walk(child)
    walk(plan[0]["Plan"])
    assert ("Seq Scan", "user_server_configs", None) not in scans, scans
    assert any(index in ("idx_configs_by_user", "idx_configs_user_server") for _, _, index in scans), scans


def test_admins_see_every_tenant_without_a_tenant_of_their_own(tenants):
    with connect("portal", role="portal_admin") as admin:
        count = admin.execute("select count(distinct user_id) from portal.user_server_configs").fetchone()[0]
    assert count >= BULK_USERS + 2


def test_reporting_reads_masked_users_and_no_secrets(tenants):
    with connect("portal", role="portal_reporting") as reporting:
        masked = reporting.execute("select email from portal.users_masked where id = %s", (tenants["alice"],)).fetchone()
        assert masked == ("al****@example.test",)
        for column, table in (("email", "users"), ("encrypted_config", "user_server_configs")):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reporting.execute(f"select {column} from portal.{table} limit 1")


def test_the_dashboard_reaches_a_tenant_only_as_its_own_row(tenants):
    on(PRIMARY, "systemctl start mcp-dashboard-refresh.service")
    with connect("portal") as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("select * from portal.mv_user_dashboard")
        rows = in_tenant(app, tenants["alice"], "select user_id, enabled_servers from portal.my_dashboard")
    assert rows == [(tenants["alice"], SERVERS)]


def test_a_config_change_is_audited_redacted_and_visible_to_its_tenant_only(tenants):
    alice, bob = tenants["alice"], tenants["bob"]
    with connect("portal") as app:
        config = in_tenant(app, alice, "update portal.user_server_configs set encrypted_config = %s, key_version = 1 "
                                       "where id = (select min(id::text)::uuid from portal.user_server_configs) "
                                       "returning id", (envelope(),))[0][0]
        audit = in_tenant(app, alice, "select l.action, c.field_name, c.old_value, c.new_value from portal.audit_logs l "
                                      "join portal.audit_changes c on c.audit_log_id = l.id and c.audit_logged_at = l.logged_at "
                                      "where l.resource_id = %s", (config,))
        assert audit == [("config_updated", "encrypted_config", "REDACTED", "REDACTED")]
        assert in_tenant(app, bob, "select count(*) from portal.audit_logs where resource_id = %s", (config,)) == [(0,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            in_tenant(app, alice, "delete from portal.audit_logs where resource_id = %s", (config,))


def test_reporting_reads_the_dashboard_with_e_mails_masked(tenants):
    on(PRIMARY, "systemctl start mcp-dashboard-refresh.service")
    with connect("portal", role="portal_reporting") as reporting:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            reporting.execute("select email from portal.mv_user_dashboard limit 1")
    with connect("portal", role="portal_reporting") as reporting:
        row = reporting.execute("select email, enabled_servers from portal.dashboard_masked where user_id = %s",
                                (tenants["alice"],)).fetchone()
    assert row == ("al****@example.test", SERVERS)


@pytest.mark.parametrize("column, value", [("id", "gen_random_uuid()"), ("logged_at", "now() + interval '3 months'")])
def test_the_app_cannot_choose_an_audit_rows_id_or_time(tenants, column, value):
    with connect("portal") as app, pytest.raises(psycopg.errors.InsufficientPrivilege, match="audit_logs"):
        in_tenant(app, tenants["alice"], f"insert into portal.audit_logs (user_id, action, {column}) "
                                         f"values (portal.tenant(), 'login', {value})")


def test_the_database_stamps_the_apps_audit_rows_and_keeps_its_own_actions(tenants):
    with connect("portal") as app:
        stamped = in_tenant(app, tenants["alice"], "insert into portal.audit_logs (user_id, action) "
                                                   "values (portal.tenant(), 'login') returning logged_at = now()")
        assert stamped == [(True,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            in_tenant(app, tenants["alice"], "insert into portal.audit_logs (user_id, action) "
                                             "values (portal.tenant(), 'config_deleted')")


def test_retention_policy_changes_are_audited_and_bounded_by_a_floor():
    def policy(conn):
        return conn.execute("select retention_days, archive_after_days, delete_after_days "
                            "from portal.retention_policies where action_type = 'login'").fetchone()
    with connect("portal", role="portal_admin") as admin:
        before = policy(admin)
        with pytest.raises(psycopg.errors.CheckViolation, match=r"retention policy login: \(1, 1, 1\) is below the floor"):
            admin.execute("update portal.retention_policies set retention_days = 1, archive_after_days = 1, "
                          "delete_after_days = 1 where action_type = 'login'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            admin.execute("update portal.retention_policies set action_type = 'gone' where action_type = 'login'")
        try:
            admin.execute("update portal.retention_policies set delete_after_days = %s where action_type = 'login'",
                          (before[2] + 1,))
            logged = admin.execute("select details from portal.audit_logs where action = 'retention_policy_changed' "
                                   "order by logged_at desc limit 1").fetchone()[0]
        finally:
            admin.execute("update portal.retention_policies set delete_after_days = %s where action_type = 'login'",
                          (before[2],))
        assert policy(admin) == before
    assert logged == {"by": "portal_admin", "action_type": "login", "old": list(before),
                      "new": [before[0], before[1], before[2] + 1]}


@pytest.mark.parametrize("stored, constraint", [
    ({"v": 2}, "configs_envelope"), ({"nonce": "short"}, "configs_envelope"), ({"extra": 1}, "configs_envelope"),
    ({"key_version": 7}, "configs_key_version_matches"),
])
def test_a_malformed_envelope_is_refused_by_the_database(tenants, stored, constraint):
    with connect("portal") as app, pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        in_tenant(app, tenants["alice"], "update portal.user_server_configs set encrypted_config = %s, key_version = 1",
                  (envelope(**stored),))


def month(offset):
    """'YYYY_MM' of the month `offset` months from this one (UTC)."""
    now = time.gmtime()
    index = now.tm_year * 12 + now.tm_mon - 1 + offset
    return f"{index // 12:04d}_{index % 12 + 1:02d}"


def run_partition_job(host=PRIMARY):
    """What the job logs when started now (its last line)."""
    since = host_clock(host)
    on(host, "systemctl start mcp-audit-partitions.service", timeout=120)
    return logged(host, "mcp-audit-partitions.service", options=f"-t mcp-portal-jobs --since {since}").strip().splitlines()[-1]


def drop_month(name):
    """Month `name` gone from wherever it is, the way the archive job drops one: the referencing partition first,
    and a referenced one detached before it is dropped."""
    as_postgres(f"""
        drop table if exists portal.audit_changes_{name};
        do $$ declare parent regclass := (select inhparent from pg_inherits
                                           where inhrelid = to_regclass('portal.audit_logs_{name}'));
        begin
          if parent is not null then
            execute format('alter table %s detach partition portal.audit_logs_{name}', parent);
          end if;
        end $$;
        drop table if exists portal.audit_logs_{name};""")


def test_partitions_run_ahead_and_the_horizon_is_a_metric():
    drop_month(month(3))
    assert "audit partitions: 2 made" in run_partition_job()
    assert as_postgres("select portal.audit_partition_horizon()").stdout.strip() == "3"
    metrics = on(PRIMARY, f"cat {METRICS}").stdout
    assert "mcp_portal_audit_partitions_ahead_months 3\n" in metrics
    for table in ("audit_logs", "audit_changes"):
        assert as_postgres(f"select to_regclass('portal.{table}_{month(3)}') is not null").stdout.strip() == "t"


def test_a_short_horizon_fails_the_job_and_says_why():
    drop_month(month(3))
    drop_month(month(2))
    short = on(PRIMARY, f"runuser -u postgres -- {layout.program('portal-jobs')} audit-partitions "
                        "--cluster 17/main --database portal --ahead 1 --min-ahead 2", check=False)
    assert short.returncode == 1 and "only 1 months of audit partitions ahead (want 2)" in short.stderr
    run_partition_job()
    assert as_postgres("select portal.audit_partition_horizon()").stdout.strip() == "3"


def test_old_months_move_to_the_archive_whole_and_expired_ones_are_dropped():
    old, expired = "2024_01", "2010_01"
    for name in (old, expired):
        drop_month(name)
    for name, start, end in ((old, "2024-01-01", "2024-02-01"), (expired, "2010-01-01", "2010-02-01")):
        as_postgres(f"""
            set role portal_owner;  -- as the partition job makes months
            create table portal.audit_logs_{name} partition of portal.audit_logs
              for values from ('{start} 00:00+00') to ('{end} 00:00+00');
            create table portal.audit_changes_{name} partition of portal.audit_changes
              for values from ('{start} 00:00+00') to ('{end} 00:00+00');
            reset role;
            with entry as (insert into portal.audit_logs (logged_at, action) values ('{start} 12:00+00', 'login')
                           returning id, logged_at)
            insert into portal.audit_changes (audit_log_id, audit_logged_at, field_name, change_type)
            select id, logged_at, 'x', 'UPDATE' from entry;""")
    run_partition_job()
    parents = as_postgres(f"select c.relname || ':' || p.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid "
                          f"join pg_class p on p.oid = i.inhparent where c.relname like '%{old}' order by 1").stdout.split()
    assert parents == [f"audit_changes_{old}:audit_changes_archive", f"audit_logs_{old}:audit_logs_archive"]
    assert as_postgres("select count(*) from portal.audit_logs_archive a join portal.audit_changes_archive c "
                       "on c.audit_log_id = a.id where a.logged_at < '2024-02-01'").stdout.strip() == "1"
    assert as_postgres(f"select to_regclass('portal.audit_logs_{expired}'), "
                       f"to_regclass('portal.audit_changes_{expired}')").stdout.strip() == "|"


def test_on_a_replica_the_jobs_do_nothing_and_say_why():
    assert "in recovery" in run_partition_job("pg-2")


@pytest.fixture
def scratch_database():
    name = "portal_migrations_e2e"
    as_postgres(f"drop database if exists {name} with (force)", database="postgres")
    as_postgres(f"create database {name} owner portal_owner", database="postgres")
    yield name
    as_postgres(f"drop database if exists {name} with (force)", database="postgres")


def sqitch(database, action, lock_timeout="5s", check=True):
    return on(PRIMARY, sqitch_command("17/main", "portal_owner", lock_timeout, database, action), check=check, timeout=300)


def test_every_change_reverts_and_deploys_again(scratch_database):
    sqitch(scratch_database, "deploy --verify")
    sqitch(scratch_database, "revert -y")
    assert as_postgres("select count(*) from pg_namespace where nspname = 'portal'", scratch_database).stdout.strip() == "0"
    assert as_postgres(f"select count(*) from sqitch.changes where project = '{PROJECT}'", scratch_database).stdout.strip() == "0"
    sqitch(scratch_database, "deploy --verify")
    assert as_postgres("select count(*) from portal.retention_policies", scratch_database).stdout.strip() == "3"


def test_a_revert_that_would_drop_rows_is_refused_unless_the_operator_says_so(scratch_database):
    sqitch(scratch_database, "deploy")
    as_postgres("insert into portal.users (azure_oid, email) values ('kept', 'kept@example.test')", scratch_database)
    refused = sqitch(scratch_database, "revert -y", check=False)
    assert refused.returncode != 0
    assert "revert refused: portal.users holds rows" in refused.stdout + refused.stderr
    assert as_postgres("select count(*) from portal.users", scratch_database).stdout.strip() == "1"
    consented = sqitch_command("17/main", "portal_owner", "5s", scratch_database, "revert -y").replace(
        "-c lock_timeout=", "-c portal.revert_drops_rows=on -c lock_timeout=")
    on(PRIMARY, consented, timeout=300)
    assert as_postgres("select to_regnamespace('portal') is null", scratch_database).stdout.strip() == "t"


def test_a_migration_behind_a_long_transaction_fails_after_lock_timeout_and_a_rerun_lands(scratch_database):
    planned = plan_changes()
    sqitch(scratch_database, f"deploy --to {planned[planned.index('audit') - 1]}")
    # An open writing transaction on the table the next change puts a trigger on.
    on(PRIMARY, f"PGAPPNAME=e2e-lock-holder setsid runuser -u postgres -- psql -d {scratch_database} -Xq -c "
                "'begin; lock table portal.user_server_configs in row exclusive mode; select pg_sleep(120)' "
                ">/dev/null 2>&1 &")
    deadline = time.monotonic() + 30
    while as_postgres("select count(*) from pg_locks l join pg_stat_activity a using (pid) where l.granted and "
                      "a.application_name = 'e2e-lock-holder' and l.mode = 'RowExclusiveLock'",
                      scratch_database).stdout.strip() != "1":
        assert time.monotonic() < deadline, "the lock holder never took its lock"
        time.sleep(0.5)
    try:
        started = time.monotonic()
        failed = sqitch(scratch_database, "deploy", lock_timeout="1s", check=False)
        waited = time.monotonic() - started
    finally:
        as_postgres("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'e2e-lock-holder'",
                    "postgres")
    assert failed.returncode != 0 and "lock timeout" in failed.stdout + failed.stderr
    assert waited < 30
    assert as_postgres("select to_regclass('portal.audit_logs') is null", scratch_database).stdout.strip() == "t"
    deployed = as_postgres(f"select count(*) from sqitch.changes where project = '{PROJECT}'", scratch_database)
    assert deployed.stdout.strip() == str(planned.index("audit"))
    sqitch(scratch_database, "deploy")
    assert as_postgres("select to_regclass('portal.audit_logs') is null", scratch_database).stdout.strip() == "f"
