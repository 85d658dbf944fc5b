"""PgBouncer on the fleet: a read-write and a read-only entry, SCRAM through auth_query over TLS, the roles
that must not come through refused, and a configuration change that reloads without dropping clients."""

from pathlib import Path

import psycopg
import pytest

from tests.e2e.test_deploy import deploy
from tests.fleet_helpers import on

REPO = Path(__file__).resolve().parents[2]
CA = REPO / ".secrets/local/tls/ca.crt"


def password(role):
    return (REPO / ".secrets/local/passwords" / role).read_text().strip()


def connect(entry, role="portal_app", secret=None, **params):
    params = {"sslmode": "verify-full", "sslrootcert": str(CA), **params}
    return psycopg.connect(host="pgbouncer-1", port=6432, dbname=entry, user=role, connect_timeout=10,
                           password=secret or password(role), prepare_threshold=None, autocommit=True, **params)


def test_read_write_entry_reaches_the_primary_and_writes():
    with connect("portal") as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone() == (False,)
        assert conn.execute("select txid_current()").fetchone()[0] > 0


def test_read_only_entry_reaches_a_replica_and_refuses_writes():
    with connect("portal_ro") as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("select txid_current()")


@pytest.mark.parametrize("role", ["replicator", "postgres"])
def test_roles_that_must_not_come_through_the_pooler_are_refused(role):
    # auth_query returns no replication role and no superuser, so PgBouncer knows no such login.
    with pytest.raises(psycopg.OperationalError, match="no such user"):
        connect("portal", role=role, secret="any")


def test_wrong_password_and_plaintext_are_refused():
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        connect("portal", secret="guess")
    with pytest.raises(psycopg.OperationalError):
        connect("portal", sslmode="disable")


def test_a_pool_change_reloads_and_the_connected_client_stays(tmp_path):
    pid = on("pgbouncer-1", "systemctl show --property=MainPID --value pgbouncer").stdout.strip()
    with connect("portal") as conn:
        # Only the key that changes: the others keep their defaults.
        (tmp_path / "local.py").write_text('pgbouncer_pool = {"default_pool_size": 20}\n')
        try:
            output = deploy("--group-data", str(tmp_path))
            assert "Reload PgBouncer (clients stay connected)" in output and "Restart PgBouncer" not in output
            assert conn.execute("select 1").fetchone() == (1,)
            ini = on("pgbouncer-1", "cat /etc/pgbouncer/pgbouncer.ini").stdout
            assert "default_pool_size = 20" in ini and "max_db_connections = 30" in ini
        finally:
            deploy()
    assert on("pgbouncer-1", "systemctl show --property=MainPID --value pgbouncer").stdout.strip() == pid
