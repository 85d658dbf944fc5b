"""etcd, Patroni's consensus store: healthy on every member, its membership the inventory's, TLS and a client
certificate from the tier's CA required."""

from tests.infra.conftest import etcd_members
from tests.infra.probe import https

TLS = "/etc/mcp-portal/etcd-tls"


def etcdctl(target):
    """etcdctl on `target`, asking its own member at its address (the one its certificate names)."""
    return (f"ETCDCTL_API=3 etcdctl --endpoints=https://{target.address}:2379 --cacert={TLS}/ca.crt "
            f"--cert={TLS}/server.crt --key={TLS}/server.key")


def test_etcd_runs_and_is_healthy(etcd_target):
    assert etcd_target.host.service("etcd").is_running and etcd_target.host.service("etcd").is_enabled
    health = etcd_target.host.run(f"{etcdctl(etcd_target)} endpoint health")
    assert health.rc == 0 and "is healthy" in health.stdout + health.stderr


def test_the_membership_is_the_inventorys(etcd_target, targets):
    rows = [line.split(", ") for line in etcd_target.host.check_output(f"{etcdctl(etcd_target)} member list").splitlines()]
    assert sorted(row[2] for row in rows if row[1] == "started") == sorted(t.name for t in etcd_members(targets.values()))
    assert all(row[3].startswith("https://") and row[4].startswith("https://") for row in rows)


def test_a_client_without_a_certificate_from_the_tiers_ca_is_refused(etcd_target):
    url = f"https://{etcd_target.address}:2379/health"
    assert https(etcd_target, url, f"{TLS}/ca.crt")[0] == 0  # the handshake needs a client certificate
    status, body = https(etcd_target, url, f"{TLS}/ca.crt", cert=f"{TLS}/server.crt", key=f"{TLS}/server.key")
    assert status == 200 and '"health":"true"' in body


def test_its_listeners_are_tls_only(etcd_target):
    plain = etcd_target.host.run("python3 -c \"import urllib.request; urllib.request.urlopen('http://%s:2379/health', "
                                 "timeout=5)\"", etcd_target.address)
    assert plain.rc != 0


def test_the_tls_key_is_etcds_only(etcd_target):
    key = etcd_target.host.file(f"{TLS}/server.key")
    assert (key.user, key.mode) == ("etcd", 0o600)
