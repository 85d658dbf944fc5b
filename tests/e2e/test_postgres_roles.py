"""Roles on the primary: made by the deploy with passwords from the secrets dir (or the operator's
environment), converged when they drift, untouched when they match."""

import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.test_deploy import deploy, grand_total, pyinfra_run
from tests.fleet_helpers import on

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = REPO / ".secrets/local/passwords"


def login(role, password, sql, host="pg-1", target="127.0.0.1", extra=""):
    conninfo = f"host={target} dbname=postgres user={role} sslmode=require connect_timeout=5 {extra}"
    return on(host, f"PGPASSWORD='{password}' psql '{conninfo}' -XtAc \"{sql}\"", check=False)


def psql(sql):
    return on("pg-1", f"runuser -u postgres -- psql -XtAc \"{sql}\"").stdout.strip()


def test_application_role_logs_in_with_its_secret_and_gets_its_guardrails():
    result = login("portal_app", (PASSWORDS / "portal_app").read_text().strip(), "show statement_timeout")
    assert result.returncode == 0 and result.stdout.strip() == "30s"
    assert "password authentication failed" in login("portal_app", "guess", "select 1").stderr


def test_role_attributes_follow_the_data():
    rows = psql("select rolname, rolcanlogin, rolbypassrls, rolreplication from pg_roles "
                "where rolname in ('portal_owner', 'portal_maintenance', 'replicator') order by 1")
    assert rows.splitlines() == ["portal_maintenance|f|t|f", "portal_owner|f|f|f", "replicator|t|f|t"]
    assert psql("select pg_has_role('monitoring', 'pg_monitor', 'member')") == "t"


def test_password_and_setting_drift_is_converged_and_then_nothing_changes():
    psql("alter role portal_app password 'changed-by-hand'")
    psql("alter role portal_app set statement_timeout = '1h'")
    output = deploy()
    assert "Role portal_app: update" in output
    assert login("portal_app", (PASSWORDS / "portal_app").read_text().strip(), "show statement_timeout").stdout.strip() == "30s"
    assert grand_total(deploy())[1] == 0


def test_operator_password_from_the_environment_wins_over_the_file():
    env = dict(os.environ, MCP_PG_PASSWORD_PORTAL_REPORTING="from-the-operators-vault")
    result = subprocess.run([str(Path(sys.executable).with_name("pyinfra")), "-y", "inventory/local.py", "deploy.py"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0
    assert login("portal_reporting", "from-the-operators-vault", "show default_transaction_read_only").stdout.strip() == "on"
    deploy()  # back to the file's password
    assert login("portal_reporting", (PASSWORDS / "portal_reporting").read_text().strip(), "select 1").returncode == 0


def test_replicator_authenticates_from_a_replica_over_verified_tls():
    password = (PASSWORDS / "replicator").read_text().strip()
    conninfo = ("host=pg-1 dbname=replication replication=true user=replicator sslmode=verify-full "
                "sslrootcert=/etc/mcp-portal/tls/ca.crt connect_timeout=5")
    result = on("pg-2", f"PGPASSWORD='{password}' psql '{conninfo}' -XtAc 'IDENTIFY_SYSTEM'", check=False)
    assert result.returncode == 0 and result.stdout.startswith(psql("select system_identifier from pg_control_system()"))


def test_operator_mode_without_a_password_is_refused_before_any_change(tmp_path):
    tls = REPO / ".secrets/local/tls"
    (tmp_path / "tls").symlink_to(tls)  # certificates present, passwords not
    result = pyinfra_run("-y", "--data", "secrets_source=operator", "--data", f"secrets_dir={tmp_path}")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Beginning operation run" not in output
    # The hosts plan at once: the first to miss a password stops the run, and pyinfra then cuts the others' facts
    # short ("could not load fact", after the refusal). Whichever role is looked up first is named.
    refusals = [line for line in output.splitlines() if "missing secret" in line]
    assert refusals and f"missing secret {tmp_path}/passwords/" in refusals[0] and "(or $MCP_PG_PASSWORD_" in refusals[0]
