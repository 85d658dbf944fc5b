"""Inventories: the local one follows the topology; the examples refuse to run unedited."""

import subprocess
import sys
from pathlib import Path

import pytest

from fleet.inventory import primary_record, pyinfra_groups
from inventory._primary import database_groups, record_primary

REPO = Path(__file__).resolve().parents[2]


def test_local_inventory_refuses_when_the_fleet_is_not_up(layout):
    with pytest.raises(SystemExit, match="inventory/local.py: the local fleet is not up"):
        pyinfra_groups(layout=layout)


def test_local_inventory_groups_and_ssh_data(layout):
    layout.local.mkdir(parents=True)
    (layout.local / "known_hosts").write_text("")
    groups = pyinfra_groups(layout=layout)
    assert [name for name, _ in groups["replicas"]] == ["pg-replica-1", "pg-replica-2"]
    name, data = groups["primary"][0]
    assert name == "pg-primary" and data["ssh_hostname"] == "198.51.100.11"
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


HOSTS = [("db-1", {"ssh_user": "deploy"}), ("db-2", {}), ("db-3", {})]


def test_the_first_database_host_is_primary_until_a_record_says_otherwise(tmp_path):
    record = tmp_path / "prod.primary"
    primary, replicas = database_groups(record, HOSTS)
    assert [n for n, _ in primary] == ["db-1"] and [n for n, _ in replicas] == ["db-2", "db-3"]
    assert primary[0][1] == {"ssh_user": "deploy", "primary_record": str(record)}
    record_primary(record, "db-2")
    primary, replicas = database_groups(record, HOSTS)
    assert [n for n, _ in primary] == ["db-2"] and [n for n, _ in replicas] == ["db-1", "db-3"]
    assert not list(tmp_path.glob("*.partial"))


def test_a_record_naming_another_host_stops_with_one_line(tmp_path):
    record = tmp_path / "prod.primary"
    record.write_text("db-9\n")
    with pytest.raises(SystemExit, match=r"prod.primary: names 'db-9', not one of the inventory's database hosts "
                                         r"\(db-1, db-2, db-3\); write the live primary's name there"):
        database_groups(record, HOSTS)


def test_the_local_inventory_follows_the_fleets_record(layout):
    layout.local.mkdir(parents=True)
    (layout.local / "known_hosts").write_text("")
    record_primary(primary_record(layout), "pg-replica-2")
    groups = pyinfra_groups(layout=layout)
    primary, replicas = database_groups(primary_record(layout), groups["primary"] + groups["replicas"])
    assert [n for n, _ in primary] == ["pg-replica-2"] and [n for n, _ in replicas] == ["pg-primary", "pg-replica-1"]
