"""Base backups and retention on the database hosts: timers scheduled and persistent, retention's keys (the only
ones that may delete) private to root, no failure recorded by a scheduled unit."""

import json

import pytest


@pytest.mark.parametrize("timer", ["mcp-base-backup.timer", "mcp-backup-retention.timer"])
def test_timer_is_enabled_persistent_and_scheduled(db_target, timer):
    host = db_target.host
    assert host.service(timer).is_running and host.service(timer).is_enabled
    assert host.check_output(f"systemctl show -P Persistent {timer}") == "yes"
    assert host.check_output(f"systemctl show -P NextElapseUSecRealtime {timer}")


def test_retention_keys_are_root_only(db_target):
    keys = db_target.host.file("/etc/mcp-portal/backup-retention.json")
    assert (keys.user, keys.mode) == ("root", 0o600)


def test_no_scheduled_unit_has_a_failure_on_record(db_target):
    failures = db_target.host.run("ls /var/lib/mcp-portal/failures/ 2>/dev/null").stdout.split()
    assert failures == [], f"recorded failures: {failures} (see journalctl -u <unit>)"


def test_the_last_restore_drill_if_any_passed(db_target):
    last = db_target.host.file("/var/lib/mcp-portal/drill/last.json")
    if not last.exists:
        pytest.skip(f"no restore drill has run on {db_target.name} yet")
    result = json.loads(last.content_string)
    assert result["ok"], f"the last restore drill failed: {result}"
