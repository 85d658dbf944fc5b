"""The deploy tier runs on one converged fleet: the first test of any file finds it deployed, with the topology's
primary as the primary (the drills, tests/drills, may have left another host primary: it is switched back)."""

import subprocess
import sys
from pathlib import Path

import pytest

from fleet.inventory import primary_record
from tests.e2e.test_deploy import REPO, deploy
from tests.fleet_helpers import TOPOLOGY


@pytest.fixture(scope="session", autouse=True)
def deployed():
    deploy()
    home = TOPOLOGY.group("primary")[0].name
    record = primary_record()
    if record.exists() and record.read_text().strip() != home:
        subprocess.run([str(Path(sys.executable).with_name("mcp-ha")), "switchover", "inventory/local.py", "--to", home],
                       cwd=REPO, check=True, timeout=900)
