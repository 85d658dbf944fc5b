"""`fleet`'s refusals: each is one line on stderr naming the problem and what to do, exit 2, nothing touched."""

import pytest

from fleet import cgroup, core, network
from fleet.cli import main
from fleet.machine import Machine


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def as_root(monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)


@pytest.fixture
def quiet_machine(monkeypatch, as_root):
    """Nothing of a fleet exists on this pretend machine; the subnet is free."""
    monkeypatch.setattr(core, "require_tools", lambda: None)
    monkeypatch.setattr(network, "link", lambda name, netns=None: None)
    monkeypatch.setattr(network, "routes", lambda: "default via 192.0.2.1 dev eth0\n")
    monkeypatch.setattr(network, "mirror_addresses", lambda mirror: ["203.0.113.80"])
    monkeypatch.setattr(Machine, "nspawn_pid", lambda self: None)


def test_not_root(capsys, layout, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    code, err = run_cli(capsys, "up")
    assert code == 2 and err.startswith("fleet: error: must run as root") and "\n" not in err


def test_missing_tools_name_the_package(capsys, layout, as_root, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda tool: None if tool in ("debootstrap", "systemd-nspawn") else "/usr/bin/" + tool)
    code, err = run_cli(capsys, "up")
    assert code == 2
    assert "debootstrap (apt-get install debootstrap)" in err and "systemd-nspawn (apt-get install systemd-container)" in err
    assert not layout.state_root.exists()


def test_a_machine_without_a_usable_cgroup2_is_refused_before_anything(capsys, layout, quiet_machine, monkeypatch):
    no_cgroup2 = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    monkeypatch.setattr(cgroup, "MOUNTINFO", type("Fake", (), {"read_text": lambda self: no_cgroup2})())
    code, err = run_cli(capsys, "up")
    assert code == 2 and err.startswith("fleet: error: no writable cgroup2 hierarchy is mounted") and "\n" not in err
    assert not layout.state_root.exists()


@pytest.mark.parametrize("command", [["ssh", "pg-1"], ["stop", "s3"], ["cut", "pg-2"], ["reset", "pgbouncer-1"]])
def test_host_commands_need_the_fleet_up(capsys, layout, as_root, command):
    code, err = run_cli(capsys, *command)
    assert (code, err) == (2, "fleet: error: the fleet is not up; run `fleet up` (or `make local`)")


def test_unknown_host(capsys, layout, as_root):
    layout.write_state(subnet="198.51.100.0/24", bridge="mcpfleet0")
    code, err = run_cli(capsys, "stop", "pg-1-2")
    assert code == 2 and "unknown host 'pg-1-2': the fleet has pg-1, pg-2" in err


def test_status_when_not_up_says_so_and_fails(capsys, layout, as_root):
    assert main(["status"]) == 1
    assert "not up" in capsys.readouterr().out


def test_bridge_taken_by_something_else(capsys, layout, quiet_machine, monkeypatch):
    monkeypatch.setattr(network, "link", lambda name, netns=None: {"ifname": name} if name == "mcpfleet0" else None)
    code, err = run_cli(capsys, "up")
    assert code == 2 and "bridge mcpfleet0 exists but" in err and "ip link del mcpfleet0" in err
    assert not layout.state_file.exists()


def test_second_fleet_running_from_another_checkout(capsys, layout, quiet_machine, monkeypatch):
    layout.state_root.mkdir(parents=True)
    layout.state_file.write_text('{"owner": "/srv/other-checkout", "subnet": "198.51.100.0/24", "bridge": "mcpfleet0"}')
    monkeypatch.setattr(Machine, "nspawn_pid", lambda self: 4242 if self.host.name == "s3" else None)
    code, err = run_cli(capsys, "up")
    assert code == 2 and "a fleet from /srv/other-checkout is running" in err and "fleet down" in err


def test_stopped_fleet_of_another_checkout_is_taken_over(layout, quiet_machine):
    """After every process was killed (as before CI), the leftovers are ours to converge."""
    layout.state_root.mkdir(parents=True)
    layout.state_file.write_text('{"owner": "/srv/other-checkout", "subnet": "198.51.100.0/24", "bridge": "mcpfleet0"}')
    core.Fleet().preflight()


def test_topology_changed_under_a_live_fleet(capsys, layout, quiet_machine):
    layout.write_state(subnet="198.51.99.0/24", bridge="mcpfleet0")
    code, err = run_cli(capsys, "up")
    assert code == 2 and "uses 198.51.99.0/24 on mcpfleet0" in err and "run `fleet down` first" in err


def test_colliding_subnet_refused_before_anything_is_made(capsys, layout, quiet_machine, monkeypatch):
    monkeypatch.setattr(network, "routes", lambda: "198.51.100.0/25 dev tun0 scope link\n")
    code, err = run_cli(capsys, "up")
    assert code == 2 and "collides with route '198.51.100.0/25 dev tun0" in err
    assert not layout.state_root.exists()


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["launch"])
    assert raised.value.code == 2
