"""A database host rebuilt from bare, and one that has a PostgreSQL cluster of its own: the deploy brings a rebuilt
host back into etcd and the Patroni cluster (a clone, with data checksums), removes an empty cluster Patroni did not
make, and refuses, before touching any host, one that holds anything."""

import pytest

from tests.e2e.test_deploy import deploy, grand_total, pyinfra_run
from tests.fleet_helpers import DATABASE, TOPOLOGY, fleet, members, on

HOST = "pg-3"
ASKED = TOPOLOGY.hosts[0]  # the member asked for the membership: pg-1, at its address (its certificate's)
ETCDCTL = (f"ETCDCTL_API=3 etcdctl --endpoints=https://{ASKED.address}:2379 --cacert=/etc/mcp-portal/etcd-tls/ca.crt "
           "--cert=/etc/mcp-portal/etcd-tls/server.crt --key=/etc/mcp-portal/etcd-tls/server.key")


def psql(sql):
    return on(HOST, f"runuser -u postgres -- psql -XtAc \"{sql}\"").stdout.strip()


def streaming():
    return members().get(HOST, {}).get("state") == "streaming"


def test_every_member_has_data_checksums():
    for host in DATABASE:
        assert on(host, "runuser -u postgres -- psql -XtAc 'show data_checksums'").stdout.strip() == "on"


def test_a_rebuilt_host_rejoins_etcd_and_the_cluster_as_a_clone():
    fleet("reset", HOST)
    output = deploy()
    assert "Replace this etcd member (its data is gone; the other members keep the cluster)" in output
    assert "Start Patroni (joins the cluster led by pg-1)" in output
    assert streaming() and psql("show data_checksums") == "on"
    listed = on(ASKED.name, f"{ETCDCTL} member list").stdout.splitlines()
    assert sorted(line.split(", ")[2] for line in listed if ", started, " in line) == DATABASE
    assert grand_total(deploy())[1] == 0


@pytest.fixture(scope="module")
def host_with_debian_default_cluster():
    """Bare host, then PostgreSQL installed the Debian way: a `main` cluster of its own, without checksums. Made
    once: the refusals below leave it as they found it, then the deploy replaces it."""
    fleet("reset", HOST)
    on(HOST, "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-17", timeout=600)
    assert psql("show data_checksums") == "off"


@pytest.mark.parametrize("content, undo", [("create database portal_data", "drop database portal_data"),
                                           ("create table kept(x int)", "drop table kept")])
def test_a_cluster_holding_anything_is_refused_before_any_change(host_with_debian_default_cluster, content, undo):
    psql(content)
    result = pyinfra_run("-y")
    assert result.returncode != 0
    assert f"{HOST}: cluster 17/main holds data and is not of the Patroni cluster mcp-portal" in result.stderr
    assert on(HOST, "test -e /etc/mcp-portal/roles", check=False).returncode == 1  # no operation ran
    assert psql("show data_checksums") == "off" and psql("select pg_is_in_recovery()") == "f"
    psql(undo)  # empty again, for the next test


def test_after_the_refusal_an_empty_cluster_patroni_did_not_make_is_replaced_by_a_clone(host_with_debian_default_cluster):
    output = deploy()
    assert "Remove the empty cluster 17/main Patroni did not make" in output
    assert streaming() and psql("show data_checksums") == "on" and psql("select pg_is_in_recovery()") == "t"
    assert on(HOST, "systemctl --failed --no-legend --plain").stdout.strip() == ""  # Debian's unit stopped cleanly
