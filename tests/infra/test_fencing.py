"""Fencing on every database host: the check runs on its timer and asks the archive successfully, PostgreSQL's
unit refuses to start a fenced cluster as a primary, and no running cluster is fenced."""

UNIT = "mcp-fence-check"


def test_fence_check_timer_is_enabled_and_its_last_run_succeeded(db_target):
    host = db_target.host
    assert host.service(f"{UNIT}.timer").is_running and host.service(f"{UNIT}.timer").is_enabled
    host.check_output(f"systemctl start {UNIT}.service")  # a check now: it reaches the archive and decides
    assert host.check_output(f"systemctl show -P Result {UNIT}.service") == "success"


def test_postgresql_starts_only_through_the_fence_and_is_not_fenced(db_target):
    host = db_target.host
    assert "fence.py may-start" in host.check_output("systemctl show -P ExecStartPre postgresql@17-main")
    assert not host.file("/var/lib/mcp-portal/fenced").exists
    assert host.service("postgresql@17-main").is_running
