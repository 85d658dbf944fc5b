"""`pyinfra inventory/local.py deploy.py` on the fleet: converges, and a second run changes nothing."""

import re
import subprocess
import sys
from pathlib import Path

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
REPO = Path(__file__).resolve().parents[2]


def deploy(*extra):
    result = subprocess.run([PYINFRA, "-y", "inventory/local.py", "deploy.py", *extra], cwd=REPO,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr  # pyinfra reports on stderr


def grand_total(output):
    """(hosts, changed, errors, unchanged) from pyinfra's results table; '-' counts as 0."""
    line = re.search(r"^\s*Grand total\s+(.*)$", output, re.M).group(1)
    return tuple(0 if cell == "-" else int(cell) for cell in line.split())


def test_deploy_converges_then_a_second_run_changes_nothing():
    deploy()
    hosts, changed, errors, unchanged = grand_total(deploy())
    assert (changed, errors) == (0, 0)
    assert unchanged > 0


def test_dry_run_after_convergence_plans_no_change():
    hosts, changed, errors, unchanged = grand_total(deploy("--dry"))
    assert (changed, errors) == (0, 0)
