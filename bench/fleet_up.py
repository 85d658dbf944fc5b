"""Cold and warm `fleet up`, seconds, with what each fetched from upstream. Writes bench/results/fleet-up.md.

cold: `fleet down --purge` first (no base, empty apt cache); warm: `fleet down` first (caches kept);
no-op: `fleet up` on a running fleet. Ratios are against the cold run of the same invocation.
Leaves the fleet up. Run as root: `make bench-fleet`.
"""

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from fleet.aptproxy import AptProxy
from fleet.layout import Layout
from fleet.topology import load

FLEET = str(Path(sys.executable).with_name("fleet"))
RESULTS = Path(__file__).resolve().parent / "results" / "fleet-up.md"


def fleet(*args):
    subprocess.run([FLEET, *args], check=True, capture_output=True, text=True)


def upstream_bytes():
    """Bytes apt-cacher-ng fetched from the mirror, from its log ('I' lines are upstream downloads)."""
    log = AptProxy(Layout(), load()).log
    if not log.exists():
        return 0
    return sum(int(line.split("|")[2]) for line in log.read_text().splitlines() if line.split("|")[1:2] == ["I"])


def timed_up():
    before = upstream_bytes()
    started = time.monotonic()
    fleet("up")
    return time.monotonic() - started, upstream_bytes() - before


def main():
    runs = {}
    fleet("down", "--purge")
    runs["cold (empty caches)"] = timed_up()
    fleet("down")
    runs["warm (caches kept)"] = timed_up()
    runs["no-op (already up)"] = timed_up()
    cold = runs["cold (empty caches)"][0]
    lines = [
        "# `fleet up`, cold and warm",
        "",
        f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench-fleet` on "
        f"{platform.node()}: {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') >> 30} GiB, "
        f"kernel {platform.release()}; {len(load().hosts)} hosts.",
        "",
        "| run | seconds | vs cold | fetched from the mirror |",
        "|---|---|---|---|",
    ]
    for name, (seconds, fetched) in runs.items():
        lines.append(f"| {name} | {seconds:.1f} | {seconds / cold:.2f}x | {fetched / 1e6:.1f} MB |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
