"""mcp-cluster's decisions on what it asks Patroni (its REST API is answered here by a script; the real one on the
fleet: tests/e2e, tests/drills)."""

import io
import json
from types import SimpleNamespace

import pytest

from hostside import cluster
from hostside.cluster import ClusterError, config_patch


class FakePatroni:
    """Answers requests from a script {(method, path): [responses, the last repeated]}; records them."""

    def __init__(self, script):
        self.script, self.asked = script, []

    def request(self, method, path, body=None, timeout=30):
        self.asked.append((method, path, body))
        answers = self.script[(method, path)]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    def get(self, path, timeout=10):
        return self.request("GET", path)


def test_a_patch_carries_only_what_differs_key_by_key():
    current = {"ttl": 30, "loop_wait": 10, "postgresql": {"use_slots": True, "parameters": {"max_connections": "200",
                                                                                              "wal_level": "replica"}},
               "failsafe_mode": True}
    wanted = {"ttl": 20, "loop_wait": 10, "postgresql": {"use_slots": True, "parameters": {"max_connections": "300",
                                                                                             "wal_level": "replica"}}}
    assert config_patch(current, wanted) == {"ttl": 20, "postgresql": {"parameters": {"max_connections": "300"}}}
    assert config_patch(current, {"ttl": 30}) == {}
    assert config_patch({}, {"synchronous_mode": "quorum"}) == {"synchronous_mode": "quorum"}


def test_a_restart_waits_for_patroni_to_flag_it_then_asks_for_the_pending_one(monkeypatch):
    monkeypatch.setattr(cluster.time, "sleep", lambda s: None)
    api = FakePatroni({("GET", "/patroni"): [(200, {"state": "running"}), (200, {"state": "running", "pending_restart": True})],
                       ("POST", "/restart"): [(200, "restarted successfully")]})
    assert cluster.restart(api, wait_pending=30, timeout=300) == "restarted successfully"
    assert api.asked[-1] == ("POST", "/restart", {"timeout": 300, "restart_pending": True})


def test_a_pending_restart_that_never_comes_is_an_error_and_no_restart(monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(cluster.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(cluster.time, "sleep", lambda s: None)
    api = FakePatroni({("GET", "/patroni"): [(200, {"state": "running"})]})
    with pytest.raises(ClusterError, match="Patroni flagged no pending restart within 30 s"):
        cluster.restart(api, wait_pending=30, timeout=300)
    assert not [a for a in api.asked if a[0] == "POST"]


def test_a_refused_restart_says_what_patroni_answered():
    api = FakePatroni({("POST", "/restart"): [(503, "restart failed")]})
    with pytest.raises(ClusterError, match=r"restart refused \(503\): restart failed"):
        cluster.restart(api, wait_pending=None, timeout=60)


def test_configure_patches_only_a_difference(monkeypatch, capsys):
    api = FakePatroni({("GET", "/config"): [(200, {"ttl": 30, "loop_wait": 10})], ("PATCH", "/config"): [(200, {})]})
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"ttl": 20, "loop_wait": 10})))
    assert cluster._configure(api, None) == 0
    assert api.asked[-1] == ("PATCH", "/config", {"ttl": 20})
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"ttl": 30})))
    api.asked.clear()
    assert cluster._configure(api, None) == 0 and [a[0] for a in api.asked] == ["GET"]
    assert "as wanted" in capsys.readouterr().out


def test_a_switchover_goes_from_the_leader_patroni_names():
    members = {"members": [{"name": "pg-1", "role": "leader"}, {"name": "pg-2", "role": "replica"}]}
    api = FakePatroni({("GET", "/cluster"): [(200, members)], ("POST", "/switchover"): [(200, "Successfully switched over")]})
    assert cluster._switchover(api, SimpleNamespace(candidate="pg-2", leader=None)) == 0
    assert api.asked[-1] == ("POST", "/switchover", {"leader": "pg-1", "candidate": "pg-2"})
    refused = FakePatroni({("GET", "/cluster"): [(200, members)], ("POST", "/switchover"): [(412, "candidate lags")]})
    with pytest.raises(ClusterError, match=r"switchover refused \(412\): candidate lags"):
        cluster._switchover(refused, SimpleNamespace(candidate="pg-2", leader=None))


def test_members_without_patroni_configured_is_an_empty_cluster_not_an_error(tmp_path, capsys):
    assert cluster.main(["mcp-cluster", "--config", str(tmp_path / "none.yml"), "members"]) == 0
    assert capsys.readouterr().out.strip() == "{}"
    assert cluster.main(["mcp-cluster", "--config", str(tmp_path / "none.yml"), "reload"]) == 1
    assert "is Patroni configured on this host?" in capsys.readouterr().err


def test_a_wait_asks_again_while_the_api_does_not_answer_yet():
    answers = iter([cluster.ClusterError("connection refused"), cluster.ClusterError("connection refused"), {"ok": 1}])

    def check():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer
    assert cluster.until(check, timeout=5, what="x", interval=0) == {"ok": 1}
    with pytest.raises(cluster.ClusterError, match=r"never within 0 s \(last: connection refused\)"):
        cluster.until(lambda: (_ for _ in ()).throw(cluster.ClusterError("connection refused")), 0, "never", interval=0)


def test_a_reload_also_has_postgresql_read_the_deploys_files():
    api = FakePatroni({("POST", "/reload"): [(202, "reload scheduled")]})
    api.postgres_port = "5433"
    ran = []
    assert cluster._reload(api, None, run=lambda argv, **kw: ran.append(argv) or SimpleNamespace(returncode=0)) == 0
    assert ran == [["runuser", "-u", "postgres", "--", "psql", "-p", "5433", "-XtAc", "select pg_reload_conf()"]]
    failed = lambda argv, **kw: SimpleNamespace(returncode=2, stderr="psql: error: connection refused\n")
    with pytest.raises(ClusterError, match="pg_reload_conf\\(\\) failed: psql: error: connection refused"):
        cluster._reload(api, None, run=failed)
    refused = FakePatroni({("POST", "/reload"): [(503, "no")]})
    with pytest.raises(ClusterError, match=r"reload refused \(503\)"):
        cluster._reload(refused, None, run=failed)
