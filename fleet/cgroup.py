"""A cgroup subtree per host: `<hierarchy>/mcp-fleet/<host>` in cgroup2 and, on a hybrid machine, in systemd's
named hierarchy. systemd-nspawn without a systemd on the machine (--register=no --keep-unit) puts the container
into `<its launcher's cgroup>/payload`: launched from one cgroup, every host's systemd would create and prune the
same unit cgroups, and a clone into a directory another host just removed fails ("Failed to spawn executor",
docs/fleet.md). Upstream's rule is one manager per subtree; each launcher moves itself into its host's own.
"""

import os
import signal
import time
from pathlib import Path

from fleet.errors import FleetError

MOUNTINFO = Path("/proc/self/mountinfo")
SUBTREE = "mcp-fleet"


def hierarchies(mountinfo_text=None):
    """The mount points nspawn places a container in: cgroup2, and the named systemd hierarchy beside it when
    cgroup2 is not mounted at /sys/fs/cgroup (a hybrid layout). FleetError names what is missing."""
    text = MOUNTINFO.read_text() if mountinfo_text is None else mountinfo_text
    unified, named = None, None
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype, options = line.split(" - ", 1)[1].split()[0], line.split(" - ", 1)[1].split()[-1]
        writable = fields[5].split(",")[0] == "rw"
        if fstype == "cgroup2" and writable:
            unified = unified or Path(fields[4])
        elif fstype == "cgroup" and "name=systemd" in options.split(",") and writable:
            named = named or Path(fields[4])
    if unified is None:
        raise FleetError("no writable cgroup2 hierarchy is mounted (see /proc/self/mountinfo); each fleet host needs "
                         "a cgroup subtree of its own: mount one (mount -t cgroup2 none /sys/fs/cgroup/unified)")
    if unified == Path("/sys/fs/cgroup"):
        return (unified,)
    if named is None:
        raise FleetError(f"cgroup2 is at {unified} (a hybrid layout) but systemd's named hierarchy is not mounted "
                         "writable; mount it (mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd)")
    return (unified, named)


class HostCgroup:
    """One host's subtree in every hierarchy; `enter()` runs in the launcher before it execs nspawn."""

    def __init__(self, host_name, roots=None):
        self.roots = roots if roots is not None else hierarchies()
        self.paths = [root / SUBTREE / host_name for root in self.roots]

    def create(self):
        for path in self.paths:
            path.mkdir(parents=True, exist_ok=True)

    def enter(self):
        """Move the calling process in (for subprocess's preexec_fn: no allocation-heavy work, no exceptions lost)."""
        for path in self.paths:
            with open(path / "cgroup.procs", "w") as procs:
                procs.write("0")

    def pids(self):
        """Every process in the subtree (the cgroup2 view holds them all)."""
        found = set()
        for directory, _, files in os.walk(self.paths[0]):
            if "cgroup.procs" in files:
                try:
                    found.update(int(p) for p in Path(directory, "cgroup.procs").read_text().split())
                except OSError:
                    pass
        return found

    def kill(self, timeout=10):
        """SIGKILL whatever is left in the subtree and wait until it is empty."""
        if not self.paths[0].exists():
            return
        deadline = time.monotonic() + timeout
        while self.pids():
            kill_file = self.paths[0] / "cgroup.kill"
            if kill_file.exists():
                kill_file.write_text("1")
            else:
                for pid in self.pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if time.monotonic() > deadline:
                raise FleetError(f"processes {sorted(self.pids())} in {self.paths[0]} outlived SIGKILL for {timeout}s")
            time.sleep(0.1)

    def remove(self):
        """Kill what is left, then remove the subtree bottom-up (and mcp-fleet itself once it is empty)."""
        self.kill()
        for path in self.paths:
            if not path.exists():
                continue
            for directory, _, _ in sorted(os.walk(path), key=lambda walked: -len(walked[0])):
                _rmdir(Path(directory))
            try:
                path.parent.rmdir()
            except OSError:
                pass  # another host's subtree is still there


def _rmdir(directory, timeout=5):
    """A cgroup goes once its last process has been reaped: EBUSY for a moment after a kill."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise FleetError(f"cgroup {directory} is still busy {timeout}s after its processes were killed; "
                                 f"see {directory}/cgroup.procs") from None
            time.sleep(0.1)
