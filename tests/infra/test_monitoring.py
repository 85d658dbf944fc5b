"""The exporters on every host of the tier: running at boot, listening on the host's address only, HTTPS with
basic auth, their secrets private, and the tier's textfile metrics readable by the node exporter."""

import pytest

EXPORTERS = {"prometheus-node-exporter": (9100, None), "prometheus-postgres-exporter": (9187, {"database"}),
             "prometheus-pgbouncer-exporter": (9127, {"pgbouncer"})}
# An anonymous scrape from the host itself, checked against the tier's CA: (HTTP status, or the error).
PROBE = """python3 - <<'EOF'
import ssl, urllib.error, urllib.request
context = ssl.create_default_context(cafile="/etc/mcp-portal/exporter-tls/ca.crt")
try:
    urllib.request.urlopen("https://{address}:{port}/metrics", context=context, timeout=10)
    print(200)
except urllib.error.HTTPError as error:
    print(error.code)
EOF"""


def exporters_of(target):
    return [(unit, port) for unit, (port, groups) in EXPORTERS.items() if groups is None or groups & target.groups]


def test_each_exporter_runs_at_boot_on_the_hosts_address_only(tier_target):
    listening = tier_target.host.check_output("ss -Hltn | awk '{print $4}'").split()
    for unit, port in exporters_of(tier_target):
        service = tier_target.host.service(unit)
        assert service.is_running and service.is_enabled, unit
        assert [a for a in listening if a.endswith(f":{port}")] == [f"{tier_target.address}:{port}"], unit


def test_each_exporter_refuses_an_anonymous_scrape(tier_target):
    for unit, port in exporters_of(tier_target):
        assert tier_target.host.check_output(PROBE.format(address=tier_target.address, port=port)) == "401", unit


@pytest.mark.parametrize("path, owner, mode", [
    ("/etc/mcp-portal/exporter-web.yml", "root:prometheus", 0o640),  # the scrape password's hash
    ("/etc/mcp-portal/exporter-tls/server.key", "prometheus:prometheus", 0o600),
    ("/etc/default/prometheus-node-exporter", "prometheus:prometheus", 0o640),
])
def test_the_exporters_secrets_are_private(tier_target, path, owner, mode):
    file = tier_target.host.file(path)
    assert (f"{file.user}:{file.group}", file.mode) == (owner, mode)


def test_the_exporters_key_is_their_own_not_the_hosts(tier_target):
    """The audit: the key that proves a host to its clients was readable by the exporters' user."""
    host = tier_target.host
    public = "openssl pkey -pubout -in {} | sha256sum"
    assert host.check_output(public.format("/etc/mcp-portal/exporter-tls/server.key")) != \
        host.check_output(public.format("/etc/mcp-portal/tls/server.key"))
    assert host.check_output("openssl x509 -noout -subject -in /etc/mcp-portal/exporter-tls/server.crt") == \
        f"subject=CN={tier_target.name}-exporter"
    assert host.run("runuser -u prometheus -- cat /etc/mcp-portal/tls/server.key").rc != 0


def test_every_textfile_metric_is_readable_and_no_scheduled_unit_failed(tier_target):
    files = tier_target.host.check_output("stat -c '%n %a' /var/lib/mcp-portal/metrics/*.prom").splitlines()
    assert "/var/lib/mcp-portal/metrics/tier.prom 644" in files
    assert [f for f in files if not f.endswith(" 644")] == [], "the node exporter reads these as prometheus"
    assert [f for f in files if "/unit_failed_" in f] == []
