"""What the fleet benchmarks share: a command on a fleet host over the fleet's own ssh settings."""

import subprocess
import sys

from fleet.access import Access
from fleet.layout import Layout


def on(host, command, timeout):
    result = subprocess.run(Access(Layout()).ssh_argv(host, command), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        sys.exit(f"{sys.argv[0]}: {host}: {result.stderr.strip()[-2000:]}")
    return result
