"""Fencing on every database host: the fence runs and its checks reach a decision (the archive answers), PostgreSQL's
unit refuses to start a fenced cluster as a primary, and no running cluster is fenced."""

import time

from hostside import layout

UNIT = "mcp-fence"
INTERVAL_S = 10  # fence_check_interval_s's default


def test_the_fence_runs_and_decided_within_its_interval(db_target):
    host = db_target.host
    assert host.service(f"{UNIT}.service").is_running and host.service(f"{UNIT}.service").is_enabled
    deadline = time.time() + 2 * INTERVAL_S
    while True:  # a recent decision: the archive answered (or the host is no primary)
        last = host.file("/var/lib/mcp-portal/metrics/fence_check.prom").content_string.split()[-1]
        if time.time() - float(last) < 2 * INTERVAL_S:
            break
        assert time.time() < deadline, f"the fence last decided at {last}: see journalctl -u {UNIT}"
        time.sleep(1)


def test_postgresql_starts_only_through_the_fence_and_is_not_fenced(db_target):
    host = db_target.host
    assert f"{layout.program('fence')} may-start" in host.check_output("systemctl show -P ExecStartPre postgresql@17-main")
    assert not host.file("/var/lib/mcp-portal/fenced").exists
    assert host.service("postgresql@17-main").is_running
