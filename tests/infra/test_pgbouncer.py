"""PgBouncer hosts: running, listening only where intended, no password hashes on disk, the lookup locked down."""

def test_pgbouncer_runs_and_starts_at_boot(pgbouncer_target):
    service = pgbouncer_target.host.service("pgbouncer")
    assert service.is_running and service.is_enabled


def test_listens_on_its_own_address_only(pgbouncer_target):
    sockets = {s for s in pgbouncer_target.host.socket.get_listening_sockets() if s.endswith(":6432")}
    assert sockets == {f"tcp://{pgbouncer_target.address}:6432"}


def test_only_the_lookup_role_is_in_the_auth_file(pgbouncer_target):
    userlist = pgbouncer_target.host.file("/etc/pgbouncer/userlist.txt")
    assert userlist.user == "postgres" and userlist.mode == 0o600
    assert [line.split()[0] for line in userlist.content_string.splitlines()] == ['"pgbouncer_auth"']
    ini = pgbouncer_target.host.file("/etc/pgbouncer/pgbouncer.ini").content_string
    assert "auth_query = SELECT usename, passwd FROM pgbouncer.get_auth($1)" in ini
    assert "client_tls_sslmode = require" in ini and "auth_type = scram-sha-256" in ini


def test_pgbouncer_trusts_only_the_database_servers_ca_for_postgresql(pgbouncer_target):
    host = pgbouncer_target.host
    ini = host.file("/etc/pgbouncer/pgbouncer.ini").content_string
    assert "server_tls_sslmode = verify-ca" in ini and "server_tls_ca_file = /etc/mcp-portal/tls/database-ca.crt" in ini
    # Its own certificate (the tier CA's) is no database server's.
    assert host.run("openssl verify -CAfile /etc/mcp-portal/tls/database-ca.crt /etc/mcp-portal/tls/server.crt").rc != 0
    assert host.run("openssl verify -CAfile /etc/mcp-portal/tls/ca.crt /etc/mcp-portal/tls/server.crt").rc == 0


def test_lookup_function_is_security_definer_with_a_pinned_path_for_one_role(primary_target):
    row = primary_target.host.check_output(
        "runuser -u postgres -- psql -d auth_lookup -XtAc %s",
        "select p.prosecdef, array_to_string(p.proconfig, ','), has_function_privilege('pgbouncer_auth', p.oid, 'execute'), "
        "has_function_privilege('portal_app', p.oid, 'execute') from pg_proc p where p.oid = 'pgbouncer.get_auth(text)'::regprocedure")
    assert row == "t|search_path=pg_catalog, pg_temp|t|f"
