"""The portal jobs' decision of where to act: only on a running primary."""

import subprocess

from hostside import portal_jobs

ARGV = ["mcp-portal-jobs", "dashboard-refresh", "--cluster", "17/main", "--database", "portal"]


def answering(pg_isready, in_recovery="f"):
    """subprocess.run as the job sees it: pg_isready's exit code, then psql's answers; records the commands."""
    ran = []

    def run(argv, **kwargs):
        ran.append(argv[0])
        if argv[0] == "pg_isready":
            return subprocess.CompletedProcess(argv, pg_isready)
        return subprocess.CompletedProcess(argv, 0, stdout=in_recovery if "pg_is_in_recovery" in argv[-1] else "", stderr="")
    return run, ran


def test_a_cluster_that_is_not_running_is_nothing_to_do_not_a_failure(monkeypatch, capsys):
    run, ran = answering(pg_isready=2)
    monkeypatch.setattr(subprocess, "run", run)
    assert portal_jobs.main(ARGV) == 0
    assert ran == ["pg_isready"] and "not accepting connections here; nothing to do" in capsys.readouterr().out


def test_a_standby_does_nothing_and_a_primary_refreshes(monkeypatch, capsys):
    run, ran = answering(pg_isready=0, in_recovery="t")
    monkeypatch.setattr(subprocess, "run", run)
    assert portal_jobs.main(ARGV) == 0 and ran == ["pg_isready", "psql"]
    run, ran = answering(pg_isready=0)
    monkeypatch.setattr(subprocess, "run", run)
    assert portal_jobs.main(ARGV) == 0 and ran == ["pg_isready", "psql", "psql"]
    assert "dashboard refreshed" in capsys.readouterr().out
