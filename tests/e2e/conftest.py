"""The deploy tier runs on one converged fleet: the first test of any file finds it deployed, with the topology's
first database host leading (the drills, tests/drills, may have left another leader: it is switched back)."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_deploy import PENDING_FILE, REPO, backups_listed, deploy
from tests.fleet_helpers import DATABASE, leader, on


@pytest.fixture(scope="session", autouse=True)
def deployed():
    """The session's first deploy: {"output", "archive_had_a_backup"} (whether it found one before it ran)."""
    archive_had_a_backup = bool(backups_listed())
    output = deploy()
    if leader() != DATABASE[0]:
        subprocess.run([str(Path(sys.executable).with_name("mcp-ha")), "switchover", "inventory/local.py", "--to",
                        DATABASE[0]], cwd=REPO, check=True, timeout=900)
    return {"output": output, "archive_had_a_backup": archive_had_a_backup}


@pytest.fixture(scope="class")
def a_pending_change():
    """A change any deploy would make (the first database host's roles file), left pending through a class of
    refusals, each of which checks it is still pending (nothing ran); one deploy after them converges."""
    on(DATABASE[0], f"rm {PENDING_FILE}")
    yield
    deploy()
