"""Routing on each PgBouncer host: HAProxy's leader listener routes to Patroni's leader only, its replicas listener
to the running replicas (the leader as a backup), both on loopback; PgBouncer's read-only entry uses the replicas
listener, its read-write entries go straight to the leader, as mcp-follow-leader (PgBouncer's user, HAProxy's
read-only statistics) writes them."""

import pytest


def servers(target, listener):
    rows = target.host.check_output("echo 'show stat' | socat stdio /run/haproxy/admin.sock").splitlines()
    header = rows[0].lstrip("# ").split(",")
    stats = [dict(zip(header, row.split(","))) for row in rows[1:] if row]
    return {s["svname"]: s["status"] for s in stats if s["pxname"] == listener and s["svname"] not in ("FRONTEND", "BACKEND")}


def test_haproxy_runs_and_listens_on_loopback_only(pgbouncer_target):
    host = pgbouncer_target.host
    assert host.service("haproxy").is_running and host.service("haproxy").is_enabled
    listening = {s for s in host.socket.get_listening_sockets() if s.endswith((":5000", ":5001"))}
    assert listening == {"tcp://127.0.0.1:5000", "tcp://127.0.0.1:5001"}


def test_the_leader_listener_routes_to_patronis_leader_only(pgbouncer_target, members):
    leader = next(name for name, m in members.items() if m["role"] == "leader")
    up = {name for name, status in servers(pgbouncer_target, "primary").items() if status == "UP"}
    assert up == {leader}


def test_the_replicas_listener_routes_to_the_streaming_replicas(pgbouncer_target, members):
    streaming = {name for name, m in members.items() if m["state"] == "streaming"}
    if not streaming:
        pytest.skip("no replica streams")
    state = servers(pgbouncer_target, "replicas")
    assert {name for name, status in state.items() if status == "UP" and not name.endswith("-leader")} <= streaming


def databases(target):
    """{entry: (host, port)} PgBouncer connects to now, as its admin console says."""
    rows = target.host.check_output("runuser -u postgres -- psql -h /var/run/postgresql -p 6432 -U pgbouncer pgbouncer "
                                    "-XAtqc 'SHOW DATABASES'").splitlines()
    return {row.split("|")[0]: tuple(row.split("|")[1:3]) for row in rows}


def test_pgbouncers_read_write_entries_reach_the_leader_itself_and_reads_go_through_haproxy(pgbouncer_target, members):
    leader = next(m for m in members.values() if m["role"] == "leader")
    entries = databases(pgbouncer_target)
    assert entries["portal"] == entries["auth_lookup"] == (leader["host"], str(leader["port"]))
    assert entries["portal_ro"] == ("127.0.0.1", "5001")


def test_the_leader_follower_runs_as_pgbouncers_user_and_only_reads_haproxy(pgbouncer_target):
    host = pgbouncer_target.host
    follower = host.service("mcp-follow-leader")
    assert follower.is_running and follower.is_enabled
    assert host.check_output("systemctl show -p User --value mcp-follow-leader") == "postgres"
    entries = host.file("/var/lib/mcp-portal-follow/leader.ini")
    assert (entries.user, entries.group, entries.mode) == ("postgres", "postgres", 0o640)
    assert host.file("/var/lib/mcp-portal-follow").mode == 0o750
    as_postgres = "runuser -u postgres -- sh -c \"echo '{}' | socat stdio {}\" 2>&1"
    assert "primary" in host.check_output(as_postgres.format("show stat", "/run/haproxy/stats-pgbouncer.sock"))
    assert "Permission denied" in host.run(as_postgres.format("disable server primary/pg-1",
                                                              "/run/haproxy/stats-pgbouncer.sock")).stdout
    assert "Permission denied" in host.run(as_postgres.format("show info", "/run/haproxy/admin.sock")).stdout
