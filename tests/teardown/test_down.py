"""`fleet down` leaves the machine as it found it: checked with the machine's own tools, not the fleet's."""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from fleet.layout import Layout
from tests.fleet_helpers import TOPOLOGY, fleet, nspawn_pids


def sh(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def down():
    """`fleet down` after one host's nspawn died (SIGKILL): its container's processes are left running."""
    orphans = set()
    if nspawn_pids():
        died = nspawn_pids()[0]
        orphans = {int(p) for p in Path(f"/proc/{died}/task/{died}/children").read_text().split()}
        os.kill(died, signal.SIGKILL)
    output = fleet("down").stdout
    return output, orphans


def test_no_container_process_is_left(down):
    assert nspawn_pids() == []
    assert not [pid for pid in down[1] if Path(f"/proc/{pid}").exists()], "a dead container's processes survived"


def test_no_cgroup_is_left(down):
    assert not list(Path("/sys/fs/cgroup").glob("*/mcp-fleet")) and not Path("/sys/fs/cgroup/mcp-fleet").exists()


def test_no_namespace_or_link_is_left(down):
    assert not [ns for ns in sh("ip", "netns", "list").split() if ns.startswith("mcpf-")]
    links = sh("ip", "-o", "link", "show")
    assert TOPOLOGY.bridge not in links and " mf-" not in links


def test_no_mount_is_left(down):
    mounts = Path("/proc/mounts").read_text()
    assert "/var/lib/mcp-fleet" not in mounts
    assert " /run/systemd/nspawn " not in mounts


def test_no_hosts_entry_state_or_proxy_is_left(down):
    assert "mcp-fleet" not in Path("/etc/hosts").read_text()
    assert not Layout().state_root.exists()
    assert "apt-cacher-ng" not in sh("ps", "-eo", "comm")


def test_commands_after_down_say_the_fleet_is_not_up(down):
    result = fleet("ssh", "pg-1", "true", check=False)
    assert result.returncode == 2 and "the fleet is not up" in result.stderr
    assert fleet("status", check=False).returncode == 1


def test_down_twice_is_harmless(down):
    assert "down:" in fleet("down").stdout
