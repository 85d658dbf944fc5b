"""Patroni on the database hosts: one leader, every member running, its REST API on the host's address over HTTPS,
the unsafe endpoints closed to a caller without the password and a certificate from the tier's CA."""

from tests.infra.probe import https

UNIT = "patroni@17-main"
TLS = "/etc/mcp-portal/tls"


def api(target, path, **options):
    return https(target, f"https://{target.address}:8008{path}", f"{TLS}/ca.crt", **options)


def test_the_cluster_has_one_leader_and_every_member_runs(members, targets):
    assert sorted(members) == sorted(name for name, t in targets.items() if "database" in t.groups)
    assert len([m for m in members.values() if m["role"] == "leader"]) == 1
    assert all(m["state"] in ("running", "streaming") for m in members.values()), members


def test_patroni_runs_starts_at_boot_and_is_restarted_when_it_dies(db_target):
    assert db_target.host.service(UNIT).is_running and db_target.host.service(UNIT).is_enabled
    assert db_target.host.check_output(f"systemctl show -P Restart {UNIT}") == "on-failure"


def test_postgresql_runs_under_patroni_only(db_target):
    assert db_target.host.check_output("systemctl show -P LoadState postgresql@17-main") == "masked"
    postmaster = db_target.host.check_output("head -1 /var/lib/postgresql/17/main/postmaster.pid")
    assert f"/{UNIT}.service" in db_target.host.file(f"/proc/{postmaster}/cgroup").content_string


def test_its_configuration_holds_passwords_for_postgres_only(db_target):
    config = db_target.host.file("/etc/patroni/17-main.yml")
    assert (config.user, config.group, config.mode) == ("postgres", "postgres", 0o600)


def test_the_rest_api_answers_on_the_hosts_address_over_https(db_target):
    listening = {s for s in db_target.host.socket.get_listening_sockets() if s.endswith(":8008")}
    assert listening == {f"tcp://{db_target.address}:8008"}
    assert api(db_target, "/patroni")[0] == 200  # a GET needs neither password nor certificate


def test_unsafe_endpoints_need_a_client_certificate_and_the_password(db_target):
    assert api(db_target, "/reload", method="POST")[0] == 403  # no certificate
    certificate = {"cert": f"{TLS}/server.crt", "key": f"{TLS}/server.key"}
    assert api(db_target, "/reload", method="POST", **certificate)[0] == 401  # no password
    assert api(db_target, "/reload", method="POST", auth="patroni:wrong", **certificate)[0] == 401
