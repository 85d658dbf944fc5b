"""The deploy tier runs on one converged fleet: the first test of any file finds it deployed, with the topology's
first database host leading (the drills, tests/drills, may have left another leader: it is switched back)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_deploy import REPO, deploy
from tests.fleet_helpers import DATABASE, leader


@pytest.fixture(scope="session", autouse=True)
def deployed():
    deploy()
    if leader() != DATABASE[0]:
        subprocess.run([str(Path(sys.executable).with_name("mcp-ha")), "switchover", "inventory/local.py", "--to",
                        DATABASE[0]], cwd=REPO, check=True, timeout=900)
