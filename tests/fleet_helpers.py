"""What the fleet-level tiers share: the `fleet` command as an SRE runs it, and ssh into hosts."""

import json
import subprocess
import sys
import time
from pathlib import Path

from fleet.access import Access
from fleet.layout import Layout
from fleet.topology import load

FLEET = str(Path(sys.executable).with_name("fleet"))
TOPOLOGY = load()
ACCESS = Access(Layout())


def fleet(*args, check=True, timeout=900):
    result = subprocess.run([FLEET, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"fleet {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def on(host, command, check=True, timeout=120, input_text=None):
    """Run a shell command on a fleet host over ssh (`input_text` on its stdin); the result (stdout and stderr as
    text)."""
    result = subprocess.run(ACCESS.ssh_argv(host, command), capture_output=True, text=True, timeout=timeout,
                            input=input_text)
    if check and result.returncode != 0:
        raise AssertionError(f"{host}: `{command}` exited {result.returncode}: {result.stderr.strip()}")
    return result


def host_clock(host):
    """The host's time now, as journalctl's --since takes it."""
    return "@" + on(host, "date +%s.%N").stdout.strip()


def logged(host, unit, *expected, options="", timeout=10):
    """The unit's journal (`journalctl -u unit -o cat options`) once it holds a line and every one of `expected`.
    A service's output reaches journald through a stream socket, so its last lines may land after `systemctl
    start` has returned."""
    deadline = time.monotonic() + timeout
    while True:
        text = on(host, f"journalctl -u {unit} -o cat --no-pager {options}").stdout
        if text.strip() and all(line in text for line in expected):
            return text
        assert time.monotonic() < deadline, f"{host}: {unit}'s journal lacks {expected} after {timeout}s:\n{text[-2000:]}"
        time.sleep(0.2)


def nspawn_pids():
    out = subprocess.run(["pgrep", "-f", "systemd-nspawn -D /var/lib/mcp-fleet"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


DATABASE = [h.name for h in TOPOLOGY.group("database")]


def members():
    """{member: Patroni's view of it} (GET /cluster through mcp-cluster), from the first database host that answers."""
    for host in DATABASE:
        found = on(host, "/usr/local/sbin/mcp-cluster members", check=False).stdout.strip()
        if found and found != "{}":
            return {m["name"]: m for m in json.loads(found).get("members", [])}
    return {}


def leader():
    """The member Patroni says leads, or None."""
    return next((name for name, m in members().items() if m["role"] == "leader"), None)


def replicas():
    """The database hosts that do not lead, in topology order."""
    lead = leader()
    return [host for host in DATABASE if host != lead]
