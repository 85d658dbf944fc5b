"""The fence's decisions, without a cluster or S3: when a primary stops itself, what it leaves, and what it lets
start. Its S3 question and its stop are exercised on the fleet (tests/drills)."""

import json

import pytest

from hostside import fence

CONFIG = {"unit": "postgresql@17-main", "cluster": "17/main"}


class Archive:
    def __init__(self, newest):
        self.newest = newest

    def superseded(self, timeline):
        return timeline < self.newest


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.setenv("MCP_METRICS_DIR", str(tmp_path))
    (tmp_path / "data").mkdir()
    return dict(CONFIG, data_directory=str(tmp_path / "data"))


def test_fencing_marks_first_then_stops_the_unit(config, tmp_path):
    calls = []
    marker = tmp_path / "fenced"

    def run(argv):
        calls.append((argv, marker.exists()))
        return type("Done", (), {"returncode": 0})()

    assert fence.fence(config, "replaced", marker=str(marker), run=run) == 0
    assert calls == [(["systemctl", "stop", "postgresql@17-main"], True)]
    assert json.loads(marker.read_text())["reason"] == "replaced"
    assert "mcp_fenced_timestamp_seconds" in (tmp_path / "fence.prom").read_text()


@pytest.mark.parametrize("timeline, newest, fenced", [
    (3, 4, True),      # the archive has a newer timeline: replaced
    (4, 4, False),     # the newest timeline is this primary's own
    (None, 9, False),  # down, or a standby: nothing to fence
])
def test_a_primary_fences_itself_only_when_the_archive_shows_it_replaced(config, monkeypatch, timeline, newest, fenced):
    reasons = []
    monkeypatch.setattr(fence, "primary_timeline", lambda config: timeline)
    monkeypatch.setattr(fence, "fence", lambda config, reason: reasons.append(reason) or 0)
    assert fence.check(config, Archive(newest)) == 0
    assert bool(reasons) is fenced
    if fenced:
        assert reasons == ["the WAL archive has timeline 4: a replica was promoted after this primary (timeline 3); "
                           "rejoin it as a standby (docs/failover.md)"]


def test_a_fenced_cluster_starts_only_as_a_standby(config, tmp_path, capsys):
    marker = tmp_path / "fenced"
    assert fence.may_start(config, marker=str(marker)) == 0  # never fenced
    marker.write_text(json.dumps({"reason": "switchover to pg-replica-1", "at": 0}))
    assert fence.may_start(config, marker=str(marker)) == 1
    assert ("postgresql@17-main is fenced since 1970-01-01 00:00:00 UTC (switchover to pg-replica-1); it may only "
            "start as a standby") in capsys.readouterr().err
    (tmp_path / "data" / "standby.signal").touch()  # a rejoin
    assert fence.may_start(config, marker=str(marker)) == 0


def test_usage_errors_exit_2(capsys):
    assert fence.main(["fence.py", "stop"]) == 2
    assert "fence.py check" in capsys.readouterr().err


def test_watch_survives_an_unreachable_archive_and_records_each_decision(config, tmp_path, monkeypatch, capsys):
    class Unreachable:
        def superseded(self, timeline):
            raise ConnectionError("no route to host")

    monkeypatch.setattr(fence, "primary_timeline", lambda config: 3)
    fence.watch(config, Unreachable(), 10, sleep=lambda s: None, checks=2)
    assert capsys.readouterr().err.count("fence check: cannot read the WAL archive: ConnectionError") == 2
    assert not (tmp_path / "fence_check.prom").exists()  # nothing was decided
    fence.watch(config, Archive(3), 10, sleep=lambda s: None, checks=1)
    assert "mcp_fence_last_check_timestamp_seconds" in (tmp_path / "fence_check.prom").read_text()


def test_watch_returns_when_a_deploy_replaced_its_code(config, monkeypatch):
    versions = iter([[1], [1], [2]])  # at start, before the first check, before the second
    monkeypatch.setattr(fence, "_code_version", lambda: next(versions))
    checks = []
    monkeypatch.setattr(fence, "check", lambda config, archive: checks.append(1))
    fence.watch(config, Archive(3), 10, sleep=lambda s: None)
    assert checks == [1]
