"""Inventories: the local one follows the topology; the examples refuse to run unedited."""

import subprocess
import sys
from pathlib import Path

import pytest

from fleet.inventory import pyinfra_groups

REPO = Path(__file__).resolve().parents[2]


def test_local_inventory_refuses_when_the_fleet_is_not_up(layout):
    with pytest.raises(SystemExit, match="inventory/local.py: the local fleet is not up"):
        pyinfra_groups(layout=layout)


def test_local_inventory_groups_and_ssh_data(layout):
    layout.local.mkdir(parents=True)
    (layout.local / "known_hosts").write_text("")
    groups = pyinfra_groups(layout=layout)
    assert [name for name, _ in groups["database"]] == ["pg-1", "pg-2", "pg-3"]
    assert [name for name, _ in groups["pgbouncer"]] == ["pgbouncer-1", "pgbouncer-2"] and groups["etcd"] == []
    name, data = groups["database"][0]
    assert name == "pg-1" and data["ssh_hostname"] == "198.51.100.11"
    assert data["ssh_strict_host_key_checking"] == "yes" and data["ssh_known_hosts_file"].endswith("known_hosts")


@pytest.mark.parametrize("env", ["prod", "staging"])
def test_example_inventories_refuse_placeholders_before_connecting(env):
    result = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), f"inventory/{env}.py", "debug-inventory"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert f"inventory/{env}.py: host 'db-1.{env}.example.invalid' is a placeholder" in result.stdout + result.stderr
    assert "Connected" not in result.stdout
