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


def test_a_job_cut_short_as_the_member_is_demoted_is_nothing_to_do_but_on_the_primary_a_failure(monkeypatch, capsys):
    answers = iter(["f", "terminated", "t"])  # a primary; the refresh cut off; then a standby

    def run(argv, **kwargs):
        if argv[0] == "pg_isready":
            return subprocess.CompletedProcess(argv, 0)
        answer = next(answers)
        if answer == "terminated":
            return subprocess.CompletedProcess(argv, 2, stdout="", stderr="FATAL:  terminating connection due to "
                                               "administrator command\nserver closed the connection unexpectedly")
        return subprocess.CompletedProcess(argv, 0, stdout=answer, stderr="")
    monkeypatch.setattr(subprocess, "run", run)
    assert portal_jobs.main(ARGV) == 0
    assert "interrupted (FATAL:  terminating connection due to administrator command): the cluster is in recovery " \
           "(a standby) now; nothing to do" in capsys.readouterr().out
    answers = iter(["f", "terminated", "f"])  # still the primary afterwards: the job failed
    assert portal_jobs.main(ARGV) == 1
    assert "terminating connection" in capsys.readouterr().err
