"""Running commands and finding processes on the control machine."""

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from fleet.errors import FleetError

# The tools `fleet` needs on the control machine, and the Debian package that brings each.
REQUIRED_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "apt-cacher-ng": "apt-cacher-ng",
}


def run(argv, *, check=True, timeout=120, env=None, input=None):
    """Run a command, capturing output; a failure becomes one FleetError line naming the command."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, input=input)
    except subprocess.TimeoutExpired:
        raise FleetError(f"`{shlex.join(argv)}` did not finish within {timeout}s") from None
    if check and result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise FleetError(f"`{shlex.join(argv)}` failed (exit {result.returncode}): {detail[-1] if detail else 'no output'}")
    return result


def require_root():
    if os.geteuid() != 0:
        raise FleetError("must run as root: it creates network namespaces, mounts and containers (try: sudo fleet ...)")


def require_tools(tools=REQUIRED_TOOLS):
    missing = [f"{tool} (apt-get install {package})" for tool, package in tools.items() if not shutil.which(tool)]
    if missing:
        raise FleetError(f"missing on this machine: {', '.join(missing)}; `make deps` installs them")


def cmdlines():
    """Every live process as (pid, argv)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield int(entry.name), raw.rstrip(b"\0").decode(errors="replace").split("\0")


def find_process(predicate):
    for pid, argv in cmdlines():
        if predicate(argv):
            return pid
    return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def terminate(pid, timeout, sig=signal.SIGTERM):
    """Signal a process and wait for it to go; SIGKILL if it outstays the timeout. True if it went gracefully."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return False
