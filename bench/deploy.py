"""Cold deploy of the local fleet and a no-op re-run: seconds and operations. Writes bench/results/deploy.md.

cold: `fleet down`, `fleet up` (not timed), then `pyinfra -y inventory/local.py deploy.py` on bare hosts;
no-op: the same command again on the converged fleet. Leaves the fleet up and deployed. Run as root:
`make bench-deploy`.
"""

import datetime
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "deploy.md"


def run(*argv):
    result = subprocess.run([str(a) for a in argv], cwd=REPO, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, argv))} failed: {(result.stderr or result.stdout)[-2000:]}")
    return result.stdout + result.stderr


def timed_deploy():
    started = time.monotonic()
    output = run(BIN / "pyinfra", "-y", "inventory/local.py", "deploy.py")
    seconds = time.monotonic() - started
    cells = re.search(r"^\s*Grand total\s+(.*)$", output, re.M).group(1).split()
    operations, changed = (0 if c == "-" else int(c) for c in cells[:2])
    return seconds, operations, changed


def main():
    run(BIN / "fleet", "down")
    run(BIN / "fleet", "up")
    runs = {"cold (bare hosts)": timed_deploy(), "no-op (converged)": timed_deploy()}
    cold = runs["cold (bare hosts)"][0]
    lines = [
        "# Deploy of the local fleet, cold and no-op",
        "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench-deploy` on "
        f"{platform.node()}: {os.cpu_count()} cores, kernel {platform.release()}; apt cache warm (packages come "
        "from the fleet's apt proxy).",
        "",
        "| run | seconds | vs cold | operations (host x operation) | changed |",
        "|---|---|---|---|---|",
    ]
    for name, (seconds, operations, changed) in runs.items():
        lines.append(f"| {name} | {seconds:.1f} | {seconds / cold:.2f}x | {operations} | {changed} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
