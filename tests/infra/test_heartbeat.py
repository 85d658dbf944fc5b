"""The whole write path, end to end: each PgBouncer host's heartbeat, written through the read-write entry by its
timer, reaches the leader and is replayed on every replica; the read-only entry refuses the same write."""

import time

from tests.infra.test_postgres import psql

UNIT = "mcp-heartbeat"
REPLAY_WAIT_S = 30


def beat(host, writer):
    """When `writer` last beat, as `host` sees it (epoch seconds; 0 before its first beat)."""
    return float(psql(host, "select coalesce(max(extract(epoch from beat_at)), 0) from heartbeat.beat "
                            f"where writer = '{writer}'", database="portal"))


def test_heartbeat_timer_is_enabled_and_its_last_run_succeeded(pgbouncer_target):
    host = pgbouncer_target.host
    assert host.service(f"{UNIT}.timer").is_running and host.service(f"{UNIT}.timer").is_enabled
    assert host.check_output(f"systemctl show -P Result {UNIT}.service") == "success"
    assert host.file("/etc/mcp-portal/heartbeat.pgpass").mode == 0o600


def test_a_beat_through_the_read_write_entry_reaches_every_replica(pgbouncer_target, targets, members):
    pgbouncer_target.host.check_output(f"systemctl start {UNIT}.service")  # a beat now, not at the next tick
    leader = next(name for name, m in members.items() if m["role"] == "leader")
    written = beat(targets[leader].host, pgbouncer_target.name)
    assert written
    for replica in (targets[name] for name in members if name != leader):
        deadline = time.monotonic() + REPLAY_WAIT_S
        while beat(replica.host, pgbouncer_target.name) < written and time.monotonic() < deadline:
            time.sleep(0.5)
        assert beat(replica.host, pgbouncer_target.name) >= written, f"{replica.name} has not replayed the beat"


def test_the_read_only_entry_refuses_writes(pgbouncer_target):
    unit = pgbouncer_target.host.file(f"/etc/systemd/system/{UNIT}.service").content_string
    command = next(line for line in unit.splitlines() if line.startswith("ExecStart=")).removeprefix("ExecStart=")
    result = pgbouncer_target.host.run(
        "runuser -u postgres -- env PGPASSFILE=/etc/mcp-portal/heartbeat.pgpass "
        + command.replace("dbname=portal ", "dbname=portal_ro "))
    assert result.rc != 0 and "read-only transaction" in result.stderr


def test_only_the_tiers_roles_may_connect_to_the_portal_database(primary_target):
    assert psql(primary_target.host, "select has_database_privilege('public', 'portal', 'connect')") == "f"
    assert psql(primary_target.host, "select has_database_privilege('pgbouncer_auth', 'portal', 'connect')") == "f"
    assert psql(primary_target.host, "select has_database_privilege('portal_app', 'portal', 'connect')") == "t"
