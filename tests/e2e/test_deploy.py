"""`pyinfra inventory/local.py deploy.py` on the fleet: converges, and a second run changes nothing."""

import re
import subprocess
import sys
from pathlib import Path

from tests.fleet_helpers import fleet, on

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
REPO = Path(__file__).resolve().parents[2]


def pyinfra_run(*args):
    return subprocess.run([PYINFRA, "inventory/local.py", "deploy.py", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)


def pyinfra(*args):
    result = pyinfra_run(*args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr  # pyinfra reports on stderr


def deploy(*extra):
    return pyinfra("-y", *extra)


def planned_changes():
    """{operation: (change, conditional change)} from `--dry`'s "Detected changes" table."""
    table = pyinfra("--dry").split("--> Detected changes:")[1].split("Detected changes may not")[0]
    rows = [line.strip() for line in table.strip().splitlines()[1:] if line.strip()]
    return {re.split(r"\s{3,}", row)[0]: tuple(re.split(r"\s{3,}", row)[1:]) for row in rows}


def grand_total(output):
    """(hosts, changed, errors, unchanged) from pyinfra's results table; '-' counts as 0."""
    line = re.search(r"^\s*Grand total\s+(.*)$", output, re.M).group(1)
    return tuple(0 if cell == "-" else int(cell) for cell in line.split())


def test_deploy_converges_then_a_second_run_changes_nothing():
    deploy()
    hosts, changed, errors, unchanged = grand_total(deploy())
    assert (changed, errors) == (0, 0)
    assert unchanged > 0


def test_dry_run_tells_the_truth_about_drift():
    assert set(planned_changes().values()) == {("-", "-")}
    on("pg-replica-1", "rm /etc/mcp-portal/roles")
    drifted = {op: plan for op, plan in planned_changes().items() if plan != ("-", "-")}
    assert list(drifted.values()) == [("1 (pg-replica-1)", "-")]
    deploy()
    assert on("pg-replica-1", "test -f /etc/mcp-portal/roles").returncode == 0


def test_an_unreachable_host_stops_the_run_before_any_change():
    on("pg-primary", "rm /etc/mcp-portal/roles")  # a change the run would make
    fleet("cut", "pg-replica-2")
    try:
        result = pyinfra_run("-y")
    finally:
        fleet("heal", "pg-replica-2")
    assert result.returncode != 0
    assert "[pg-replica-2] Could not connect" in result.stdout + result.stderr
    assert on("pg-primary", "test -e /etc/mcp-portal/roles", check=False).returncode == 1
    deploy()
    assert on("pg-primary", "test -e /etc/mcp-portal/roles").returncode == 0
