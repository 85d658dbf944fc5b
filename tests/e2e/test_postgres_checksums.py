"""A host that already has PostgreSQL without data checksums: the deploy converts an empty cluster in place
(keeping what is in it) and refuses, before touching any host, when the cluster holds a database."""

from tests.e2e.test_deploy import deploy, pyinfra_run
from tests.fleet_helpers import fleet, on

HOST = "pg-replica-2"


def psql(sql):
    return on(HOST, f"runuser -u postgres -- psql -tAc \"{sql}\"").stdout.strip()


def host_with_debian_default_cluster():
    """Bare host, then PostgreSQL installed the Debian way: its `main` cluster has no checksums."""
    fleet("reset", HOST)
    on(HOST, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-17", timeout=600)
    assert psql("show data_checksums") == "off"


def test_empty_cluster_gets_checksums_and_keeps_its_rows():
    host_with_debian_default_cluster()
    psql("create table kept(x int); insert into kept values (42)")
    deploy()
    assert psql("show data_checksums") == "on"
    assert psql("select x from kept") == "42"


def test_cluster_with_a_database_is_refused_before_any_change():
    host_with_debian_default_cluster()
    psql("create database portal_data")
    result = pyinfra_run("-y")
    assert result.returncode != 0
    assert f"{HOST}: cluster 17/main holds data and has no data checksums" in result.stderr + result.stdout
    assert on(HOST, "test -e /etc/mcp-portal/roles", check=False).returncode == 1  # no operation ran
    assert psql("show data_checksums") == "off"
    # Leave the fleet converged for the tiers after this one.
    psql("drop database portal_data")
    deploy()
    assert psql("show data_checksums") == "on"
