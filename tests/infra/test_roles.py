"""The tier's roles on the primary: present, least privilege, SCRAM passwords only."""

from tests.infra.test_postgres import psql

LOGIN_ROLES = ["heartbeat", "monitoring", "pgbouncer_auth", "portal_admin", "portal_app", "portal_reporting",
               "replicator"]


def test_login_roles_exist_and_only_replicator_replicates(primary_target):
    rows = psql(primary_target.host, "select rolname, rolreplication, rolsuper from pg_roles "
                "where rolcanlogin and rolname <> 'postgres' and rolname !~ '^pg_' order by 1").splitlines()
    assert [row.split("|")[0] for row in rows] == LOGIN_ROLES
    assert [row for row in rows if row.endswith("|t") or "|t|" in row] == ["replicator|t|f"]


def test_every_stored_password_is_a_scram_verifier(primary_target):
    assert psql(primary_target.host, "select count(*) from pg_authid where rolpassword is not null "
                "and rolpassword not like 'SCRAM-SHA-256$%'") == "0"


def test_application_role_has_statement_and_lock_timeouts(primary_target):
    settings = psql(primary_target.host, "select array_to_string(setconfig, ',') from pg_db_role_setting s "
                    "join pg_roles r on r.oid = s.setrole where r.rolname = 'portal_app' and s.setdatabase = 0")
    assert "statement_timeout=30s" in settings and "lock_timeout=5s" in settings
