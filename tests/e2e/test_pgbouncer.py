"""PgBouncer on the fleet: a read-write entry straight to the leader and a read-only entry over the replicas, SCRAM
through auth_query over TLS, the roles that must not come through refused, and a configuration change that reloads
without dropping clients."""

import threading
from pathlib import Path

import psycopg
import pytest

from tests.e2e.test_deploy import deploy
from tests.e2e.test_replication import eventually
from tests.fleet_helpers import TOPOLOGY, host_clock, on

REPO = Path(__file__).resolve().parents[2]
CA = REPO / ".secrets/local/tls/ca.crt"


def password(role):
    return (REPO / ".secrets/local/passwords" / role).read_text().strip()


def connect(entry, role="portal_app", secret=None, host="pgbouncer-1", **params):
    params = {"sslmode": "verify-full", "sslrootcert": str(CA), "connect_timeout": 10, "autocommit": True, **params}
    return psycopg.connect(host=host, port=6432, dbname=entry, user=role,
                           password=secret or password(role), prepare_threshold=None, **params)


ADDRESSES = {h.name: str(h.address) for h in TOPOLOGY.hosts}


def served_by(entry, pooler="pgbouncer-1", times=6):
    """The database hosts that serve `times` transactions open at once on `entry` through `pooler`, on server
    connections made now (RECONNECT: PgBouncer keeps a pool's server connections where HAProxy sent them when they
    were made, until server_lifetime recycles them)."""
    on(pooler, "runuser -u postgres -- psql -h /var/run/postgresql -p 6432 -U pgbouncer pgbouncer "
               f"-XAtqc 'RECONNECT {entry}'")
    names = {address: name for name, address in ADDRESSES.items()}
    connections = [connect(entry, host=pooler, autocommit=False) for _ in range(times)]
    try:  # each open transaction holds a server connection of its own
        return {names[conn.execute("select host(inet_server_addr())").fetchone()[0]] for conn in connections}
    finally:
        for conn in connections:
            conn.close()


def haproxy(pooler, command):
    return on(pooler, f"echo '{command}' | socat stdio /run/haproxy/admin.sock").stdout


@pytest.mark.parametrize("pooler", ["pgbouncer-1", "pgbouncer-2"])
def test_the_read_write_entry_of_every_pooler_reaches_the_leader_and_writes(pooler):
    with connect("portal", host=pooler) as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone() == (False,)
        assert conn.execute("select txid_current()").fetchone()[0] > 0
    assert served_by("portal", pooler) == {"pg-1"}


def test_the_read_only_entry_reaches_the_replicas_and_refuses_writes():
    with connect("portal_ro") as conn:
        assert conn.execute("select pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("select txid_current()")
    assert served_by("portal_ro", times=10) == {"pg-2", "pg-3"}


def test_a_replica_past_its_lag_leaves_the_read_only_entry_until_it_catches_up():
    """pg-2 (realtime: 10 MB) stops receiving while the leader writes 20 MB (its WAL receiver frozen: Patroni
    measures a replica's lag by the WAL it has received): HAProxy's check of its Patroni takes it out, and back once
    it has caught up."""
    on("pg-2", "pkill -STOP -f 'postgres: .*: walreceiver'")
    try:
        on("pg-1", "runuser -u postgres -- psql -d portal -XtAc 'create table lag_probe as select "
                   "repeat(md5(g::text), 8) from generate_series(1, 60000) g; drop table lag_probe'")
        eventually(lambda: served_by("portal_ro") == {"pg-3"}, timeout=30)
    finally:
        on("pg-2", "pkill -CONT -f 'postgres: .*: walreceiver'")
    eventually(lambda: served_by("portal_ro", times=10) == {"pg-2", "pg-3"}, timeout=30)


def test_with_no_replica_to_take_them_reads_go_to_the_leader():
    for replica in ("pg-2", "pg-3"):
        haproxy("pgbouncer-1", f"disable server replicas/{replica}")
    try:
        assert served_by("portal_ro") == {"pg-1"}
    finally:
        for replica in ("pg-2", "pg-3"):
            haproxy("pgbouncer-1", f"enable server replicas/{replica}")


def connects_to(pooler, entry):
    """(host, port) PgBouncer's `entry` connects to now, as its admin console says."""
    rows = on(pooler, "runuser -u postgres -- psql -h /var/run/postgresql -p 6432 -U pgbouncer pgbouncer "
                      "-XAtqc 'SHOW DATABASES'").stdout.splitlines()
    return next(tuple(row.split("|")[1:3]) for row in rows if row.split("|")[0] == entry)


def writes(pooler):
    try:
        with connect("portal", host=pooler, connect_timeout=5) as conn:
            return conn.execute("select txid_current()").fetchone()[0] > 0
    except psycopg.OperationalError:
        return False


def writes_within(pooler, seconds):
    """writes(), or False when no answer comes within `seconds` (a client PgBouncer keeps waiting for a server)."""
    answer = []
    probe = threading.Thread(target=lambda: answer.append(writes(pooler)), daemon=True)
    probe.start()
    probe.join(seconds)
    return bool(answer and answer[0])


def test_with_no_leader_seen_the_read_write_entries_go_through_haproxy_until_it_sees_one():
    """HAProxy on pgbouncer-2 loses sight of the leader (its server put in maintenance): mcp-follow-leader sends the
    read-write entries through HAProxy's leader listener, which has nothing to offer, and straight back to the
    leader once HAProxy's check sees it again. pgbouncer-1 is not moved."""
    since = host_clock("pgbouncer-2")
    haproxy("pgbouncer-2", "disable server primary/pg-1")
    try:
        eventually(lambda: {connects_to("pgbouncer-2", e) for e in ("portal", "auth_lookup")} == {("127.0.0.1", "5000")},
                   timeout=5)
        assert not writes("pgbouncer-2") and writes("pgbouncer-1")
        assert connects_to("pgbouncer-1", "portal") == (ADDRESSES["pg-1"], "5432")
    finally:
        haproxy("pgbouncer-2", "enable server primary/pg-1")
    eventually(lambda: connects_to("pgbouncer-2", "portal") == (ADDRESSES["pg-1"], "5432"), timeout=10)
    # PgBouncer answers a new client with its last failed server login for server_login_retry (1 s) after it
    eventually(lambda: writes("pgbouncer-2"), timeout=5)
    # The service logs a move just after the reload a client can see, so its line may reach the journal later.
    eventually(lambda: on("pgbouncer-2", f"journalctl -u mcp-follow-leader --since {since} -o cat").stdout.splitlines()
               == ["portal, auth_lookup -> HAProxy (no single leader); PgBouncer reloaded",
                   "portal, auth_lookup -> pg-1; PgBouncer reloaded"], timeout=5)


def test_only_postgresqls_own_key_passes_for_the_leader():
    """The audit's item 7: the exporters' key on the leader names the host too, but the tier CA signed it, and
    PgBouncer trusts only the database servers' CA: with that certificate in PostgreSQL's place, PgBouncer refuses
    the leader (TLS) and no write goes through; with PostgreSQL's own back, they do."""
    tls, exporter = "/etc/mcp-portal/tls", "/etc/mcp-portal/exporter-tls"
    reload = "runuser -u postgres -- psql -XAtqc 'select pg_reload_conf()' >/dev/null"
    log_lines = int(on("pgbouncer-1", "wc -l < /var/log/postgresql/pgbouncer.log").stdout)
    on("pg-1", f"cp -p {tls}/server.crt {tls}/server.crt.kept && cp -p {tls}/server.key {tls}/server.key.kept && "
               f"cp {exporter}/server.crt {tls}/server.crt && cp {exporter}/server.key {tls}/server.key && {reload}")
    try:
        on("pgbouncer-1", "runuser -u postgres -- psql -h /var/run/postgresql -p 6432 -U pgbouncer pgbouncer "
                          "-XAtqc 'RECONNECT portal'")
        assert not writes_within("pgbouncer-1", 8)
        refused = on("pgbouncer-1", f"tail -n +{log_lines + 1} /var/log/postgresql/pgbouncer.log").stdout
        assert "certificate verify failed" in refused
    finally:
        on("pg-1", f"mv {tls}/server.crt.kept {tls}/server.crt && mv {tls}/server.key.kept {tls}/server.key && {reload}")
    eventually(lambda: writes("pgbouncer-1"), timeout=10)


@pytest.mark.parametrize("role", ["replicator", "postgres", "portal_maintenance"])
def test_roles_that_must_not_come_through_the_pooler_are_refused(role):
    # auth_query returns no replication role and no superuser, so PgBouncer knows no such login.
    with pytest.raises(psycopg.OperationalError, match="no such user"):
        connect("portal", role=role, secret="any")


def test_no_login_over_the_network_administers_pgbouncer():
    """The audit's scenario: portal_admin reached the admin console through the pooler and could PAUSE or SHUTDOWN
    it. Now no login over the network is an admin; the exporter's stats user may only read."""
    with pytest.raises(psycopg.OperationalError, match="not allowed"):
        connect("pgbouncer", role="portal_admin")
    with connect("pgbouncer", role="monitoring", cursor_factory=psycopg.ClientCursor) as stats:
        assert stats.execute("SHOW POOLS").fetchall()
        with pytest.raises(psycopg.Error, match="admin access needed"):
            stats.execute("PAUSE portal")


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
