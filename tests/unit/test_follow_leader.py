"""mcp-follow-leader's decisions, and one step against a real unix socket that answers as HAProxy does and a real
process that counts the reloads it is sent."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from hostside import follow_leader

HEADER = "# pxname,svname,status,check_status,"


def stats(*servers, listener="primary"):
    """HAProxy's `show stat` rows: (svname, status, check_status) for `listener`, plus its frontend and backend."""
    rows = [f"{listener},FRONTEND,OPEN,,", *(f"{listener},{name},{status},{check}," for name, status, check in servers),
            f"{listener},BACKEND,UP,,", "replicas,pg-3,UP,L7OK,"]
    return [dict(zip(HEADER[2:].split(","), row.split(","))) for row in rows]


@pytest.mark.parametrize("servers, leader", [
    ([("pg-1", "UP", "L7OK"), ("pg-2", "DOWN", "L7STS"), ("pg-3", "DOWN", "L7STS")], "pg-1"),
    ([("pg-1", "DOWN", "L4CON"), ("pg-2", "DOWN", "L7STS"), ("pg-3", "DOWN", "L7STS")], None),  # an election
    ([("pg-1", "UP 2/3", "L7STS"), ("pg-2", "UP", "L7OK"), ("pg-3", "DOWN", "L7STS")], "pg-2"),  # pg-1 going down
    ([("pg-1", "UP", "L7STS"), ("pg-2", "UP", "L7OK"), ("pg-3", "DOWN", "L7STS")], "pg-2"),  # both up: last check
    ([("pg-1", "UP", "L7OK"), ("pg-2", "UP", "L7OK"), ("pg-3", "DOWN", "L7STS")], None),  # two say so: no guess
    ([("pg-1", "MAINT", "L7OK"), ("pg-2", "DOWN", "L7STS"), ("pg-3", "DOWN", "L7STS")], None),
    ([("pg-1", "UP", "INI"), ("pg-2", "UP", "INI"), ("pg-3", "UP", "INI")], None),  # HAProxy just started
    # Seen on the fleet just after `enable server`: the leader's next check running ("* "), the last one passed.
    ([("pg-1", "UP 1/2", "* L7OK"), ("pg-2", "DOWN", "L7STS"), ("pg-3", "DOWN", "* L7STS")], "pg-1"),
    ([("pg-1", "UP", "* L7STS"), ("pg-2", "UP", "* L7OK"), ("pg-3", "DOWN", "L7STS")], "pg-2"),
], ids=["one up", "none", "old going down", "set by switchover", "two leaders", "maintenance", "unchecked",
        "its check running", "switchover, checks running"])
def test_the_leader_is_the_one_member_haproxy_sees_up(servers, leader):
    assert follow_leader.leader_of(stats(*servers), "primary") == leader


CONFIG = {"members": {"pg-1": ["198.51.100.11", 5432], "pg-2": ["198.51.100.12", 5433]},
          "fallback": ["127.0.0.1", 5000], "listener": "primary", "interval_s": 0.05,
          "entries": [{"name": "portal", "dbname": "portal", "options": ""},
                      {"name": "auth_lookup", "dbname": "auth_lookup", "options": "pool_size=2 max_db_connections=2"}]}


def test_every_entry_goes_to_the_leader_or_through_haproxy():
    assert follow_leader.render(CONFIG, "pg-2").splitlines()[1:] == [
        "portal = host=198.51.100.12 port=5433 dbname=portal",
        "auth_lookup = host=198.51.100.12 port=5433 dbname=auth_lookup pool_size=2 max_db_connections=2"]
    lines = follow_leader.render(CONFIG, None).splitlines()
    assert "no single leader" in lines[0] and lines[1] == "portal = host=127.0.0.1 port=5000 dbname=portal"


class FakeHAProxy:
    """A unix socket that answers `show stat` with the rows it is given, one command per connection as HAProxy does."""

    def __init__(self, path):
        self.servers, self.commands = [], []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            conn, _ = self.server.accept()
            with conn:
                self.commands.append(conn.recv(100).decode())
                rows = [HEADER] + [f"primary,{name},{status},{check}," for name, status, check in self.servers]
                conn.sendall(("\n".join(rows) + "\n\n").encode())


@pytest.fixture
def tier(tmp_path):
    """(config, the HAProxy, a process that appends a line per SIGHUP to `hups`) as on a PgBouncer host."""
    hups = tmp_path / "hups"
    pgbouncer = subprocess.Popen([sys.executable, "-c", "import signal, sys, time\n"
                                  f"signal.signal(signal.SIGHUP, lambda *a: open({str(hups)!r}, 'a').write('reload\\n'))\n"
                                  "print('ready', flush=True)\nwhile True: time.sleep(1)"], stdout=subprocess.PIPE)
    assert pgbouncer.stdout.readline() == b"ready\n"
    (tmp_path / "pgbouncer.pid").write_text(f"{pgbouncer.pid}\n")
    config = dict(CONFIG, haproxy_socket=str(tmp_path / "stats.sock"), output=str(tmp_path / "leader.ini"),
                  pgbouncer_pidfile=str(tmp_path / "pgbouncer.pid"))
    yield config, FakeHAProxy(tmp_path / "stats.sock"), hups
    pgbouncer.send_signal(signal.SIGTERM)
    pgbouncer.wait()


def reloads(hups, expected):
    for _ in range(50):  # the signal handler runs in the other process
        if hups.exists() and hups.read_text().count("reload") >= expected:
            break
        time.sleep(0.02)
    return hups.read_text().count("reload") if hups.exists() else 0


def test_a_moved_leader_is_written_once_and_pgbouncer_reloaded_once(tier, capsys):
    config, haproxy, hups = tier
    haproxy.servers = [("pg-1", "UP", "L7OK"), ("pg-2", "DOWN", "L7STS")]
    assert follow_leader.step(config, None) is None
    assert "host=198.51.100.11" in open(config["output"]).read() and reloads(hups, 1) == 1
    assert os.stat(config["output"]).st_mode & 0o777 == 0o640
    follow_leader.step(config, None)  # nothing moved: no write, no reload
    assert reloads(hups, 2) == 1 and haproxy.commands == ["show stat\n"] * 2
    haproxy.servers = [("pg-1", "DOWN", "L4CON"), ("pg-2", "DOWN", "L7STS")]
    follow_leader.step(config, None)
    assert "host=127.0.0.1 port=5000" in open(config["output"]).read() and reloads(hups, 2) == 2
    haproxy.servers = [("pg-1", "DOWN", "L4CON"), ("pg-2", "UP", "L7OK")]
    follow_leader.step(config, None)
    assert "host=198.51.100.12 port=5433" in open(config["output"]).read() and reloads(hups, 3) == 3
    assert sorted(os.listdir(os.path.dirname(config["output"]))) == ["hups", "leader.ini", "pgbouncer.pid", "stats.sock"]  # no temporary left
    assert capsys.readouterr().out.splitlines() == [
        "portal, auth_lookup -> pg-1; PgBouncer reloaded", "portal, auth_lookup -> HAProxy (no single leader); PgBouncer reloaded",
        "portal, auth_lookup -> pg-2; PgBouncer reloaded"]


def test_an_unreadable_haproxy_leaves_the_entries_and_is_said_once(tier, tmp_path, capsys):
    config, _, hups = tier
    config["haproxy_socket"] = str(tmp_path / "missing.sock")
    error = follow_leader.step(config, None)  # the first run: PgBouncer must have a file to start with
    assert "through HAProxy" in open(config["output"]).read() and "until it answers" in error
    with open(config["output"], "w") as f:
        f.write("; pg-2's entries\n")
    error = follow_leader.step(config, follow_leader.step(config, error))
    assert open(config["output"]).read() == "; pg-2's entries\n" and reloads(hups, 0) == 0
    assert "the entries stay" in error
    assert len(capsys.readouterr().out.splitlines()) == 2  # the first run's, then one for the lasting error


def test_a_pgbouncer_not_running_is_no_failure(tier, tmp_path):
    config, haproxy, hups = tier
    config["pgbouncer_pidfile"] = str(tmp_path / "absent.pid")
    haproxy.servers = [("pg-1", "UP", "L7OK")]
    assert follow_leader.step(config, None) is None and "host=198.51.100.11" in open(config["output"]).read()
