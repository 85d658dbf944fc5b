"""HAProxy beside PgBouncer: its leader listener routes to Patroni's leader only, its replicas listener to the
running replicas (the leader as a backup), both on loopback; PgBouncer's entries use them."""

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


def test_pgbouncers_entries_go_through_haproxy(pgbouncer_target):
    ini = pgbouncer_target.host.file("/etc/pgbouncer/pgbouncer.ini").content_string
    assert "host=127.0.0.1 port=5000" in ini and "host=127.0.0.1 port=5001" in ini
