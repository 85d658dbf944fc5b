"""The drill's command line; the drill itself runs on the fleet (tests/e2e/test_backups.py)."""

import pytest

from hostside import restore_drill


def test_scratch_and_port_are_required(capsys):
    with pytest.raises(SystemExit) as exited:
        restore_drill.main(["restore_drill.py", "--port", "5434"])
    assert exited.value.code == 2 and "--scratch" in capsys.readouterr().err


def test_a_failed_drill_keeps_the_last_success(tmp_path, monkeypatch):
    monkeypatch.setenv("MCP_METRICS_DIR", str(tmp_path))
    restore_drill.record_drill({"started_at": 100.0, "duration_s": 20.0, "ok": True})
    restore_drill.record_drill({"started_at": 500.0, "duration_s": 5.0, "ok": False})
    run = (tmp_path / "restore_drill.prom").read_text()
    assert "mcp_restore_drill_success 0\n" in run and "mcp_restore_drill_last_run_timestamp_seconds 505.0\n" in run
    assert "mcp_restore_drill_last_success_timestamp_seconds 120.0\n" in (tmp_path / "restore_drill_success.prom").read_text()
