"""What the fleet benchmarks share: a command on a fleet host over the fleet's own ssh settings."""

import json
import subprocess
import sys

from fleet.access import Access
from fleet.layout import Layout


def on(host, command, timeout):
    result = subprocess.run(Access(Layout()).ssh_argv(host, command), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        sys.exit(f"{sys.argv[0]}: {host}: {result.stderr.strip()[-2000:]}")
    return result


def leader():
    """The database host Patroni says leads now (the benchmarks run on it)."""
    from fleet.topology import load
    for member in (h.name for h in load().group("database")):
        found = subprocess.run(Access(Layout()).ssh_argv(member, "/usr/local/sbin/mcp-cluster members"),
                               capture_output=True, text=True, timeout=60).stdout.strip()
        if found and found != "{}":
            return next(m["name"] for m in json.loads(found)["members"] if m["role"] == "leader")
    sys.exit(f"{sys.argv[0]}: no Patroni member answers: is the fleet up and deployed (make local)?")
