"""A host that already has PostgreSQL without data checksums: the deploy converts an empty cluster in place and
refuses, before touching any host, a cluster that holds anything (it is neither converted nor cloned over)."""

import pytest

from tests.e2e.test_deploy import deploy, pyinfra_run
from tests.fleet_helpers import fleet, on

HOST = "pg-3"


def psql(sql):
    return on(HOST, f"runuser -u postgres -- psql -XtAc \"{sql}\"").stdout.strip()


def host_with_debian_default_cluster():
    """Bare host, then PostgreSQL installed the Debian way: its `main` cluster has no checksums."""
    fleet("reset", HOST)
    on(HOST, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-17", timeout=600)
    assert psql("show data_checksums") == "off"


def test_empty_cluster_gets_checksums_then_becomes_a_replica():
    host_with_debian_default_cluster()
    output = deploy()
    assert "Enable data checksums on the empty cluster 17/main" in output
    assert psql("show data_checksums") == "on" and psql("select pg_is_in_recovery()") == "t"


@pytest.mark.parametrize("content", ["create database portal_data", "create table kept(x int)"])
def test_cluster_holding_anything_is_refused_before_any_change(content):
    host_with_debian_default_cluster()
    psql(content)
    result = pyinfra_run("-y")
    assert result.returncode != 0
    # Refused by the checksum check or the inventory-versus-reality check, whichever looks first.
    last_line = (result.stderr + result.stdout).strip().splitlines()[-1]
    assert f"{HOST}" in last_line and "holds data" in last_line
    assert on(HOST, "test -e /etc/mcp-portal/roles", check=False).returncode == 1  # no operation ran
    assert psql("show data_checksums") == "off" and psql("select pg_is_in_recovery()") == "f"


def test_fleet_converges_again_after_the_refusals():
    fleet("reset", HOST)
    deploy()
    assert psql("select pg_is_in_recovery()") == "t"
