"""PostgreSQL on the database hosts (group database), run by Patroni."""

import pytest

from deploys.tenant_module import BUILD_PACKAGES, REMOTE_SOURCES, headers_package, source_digest, stamp_path
from hostside.layout import Cluster

PG = Cluster(17, "main")
PACKAGES = ["postgresql-17", "postgresql-client-17", "postgresql-common", "postgresql-client-common"]


@pytest.fixture
def db(db_target):
    return db_target.host


def psql(host, sql, database="postgres"):
    return host.check_output("runuser -u postgres -- psql -d %s -XtAc %s", database, sql)


def test_postgresql_17_runs_under_patroni_which_starts_at_boot(db):
    assert db.service("patroni@17-main").is_running and db.service("patroni@17-main").is_enabled
    assert db.file("/etc/systemd/system/postgresql@17-main.service").linked_to == "/dev/null"  # never started beside it
    assert psql(db, "show server_version_num").startswith("17")


def test_packages_are_held_against_unattended_upgrades(db):
    held = db.check_output("apt-mark showhold").split()
    assert set(PACKAGES) <= set(held)


def test_cluster_has_data_checksums(db):
    assert psql(db, "show data_checksums") == "on"


def test_configuration_is_applied_with_no_restart_pending(db):
    assert psql(db, "select count(*) from pg_settings where pending_restart") == "0"
    assert psql(db, "show wal_level") == "replica"
    assert psql(db, "show password_encryption") == "scram-sha-256"


def test_alter_system_cannot_drift_from_the_repository(db):
    result = db.run("runuser -u postgres -- psql -XtAc %s", "alter system set work_mem = '64MB'")
    assert result.rc != 0 and "ALTER SYSTEM is not allowed" in result.stderr


def test_the_settings_are_the_deploys_included_by_patronis_postgresql_conf(db):
    conf = db.file("/etc/postgresql/17/main/mcp-portal.conf")
    assert conf.user == "postgres" and conf.mode == 0o644 and conf.contains("^# Rendered by deploy.py")
    assert db.file("/etc/postgresql/17/main/postgresql.conf").contains("^include '/etc/postgresql/17/main/mcp-portal.conf'")


def test_listens_on_loopback_and_its_own_address_only(db_target):
    listening = {socket for socket in db_target.host.socket.get_listening_sockets() if socket.endswith(":5432")}
    assert listening == {"tcp://127.0.0.1:5432", f"tcp://{db_target.address}:5432", "tcp://::1:5432"}


def test_network_access_is_tls_and_scram_only(db):
    hba = db.file("/etc/postgresql/17/main/pg_hba.conf")
    assert hba.user == "postgres" and hba.mode == 0o640
    rules = [line.split() for line in hba.content_string.splitlines() if line.strip() and not line.startswith("#")]
    assert all(rule[-1] in ("scram-sha-256", "cert", "peer") for rule in rules)
    assert all(rule[0] == "hostssl" for rule in rules if rule[0] != "local")
    assert psql(db, "show ssl") == "on"
    assert psql(db, "show ssl_min_protocol_version") in ("TLSv1.2", "TLSv1.3")


def test_tls_key_is_private_to_postgres_and_only_its_certificate_is_the_database_cas(db):
    key = db.file("/etc/mcp-portal/tls/server.key")
    assert key.user == "postgres" and key.mode == 0o600
    verify = "openssl verify -CAfile /etc/mcp-portal/tls/database-ca.crt {}"
    assert db.run(verify.format("/etc/mcp-portal/tls/server.crt")).rc == 0
    # The other keys on the host (the exporters', etcd's) cannot pass for PostgreSQL to PgBouncer.
    for other in ("/etc/mcp-portal/exporter-tls/server.crt", "/etc/mcp-portal/etcd-tls/server.crt"):
        assert db.file(other).exists and db.run(verify.format(other)).rc != 0
    assert db.run("openssl verify -CAfile /etc/mcp-portal/tls/ca.crt /etc/mcp-portal/etcd-tls/server.crt").rc == 0


def test_the_tenant_module_is_built_from_these_sources_only_root_may_change_it_and_no_compiler_is_left(db):
    assert db.file(stamp_path(PG)).content_string.strip() == source_digest()
    extension = PG.extension_directory
    for path in (f"{PG.lib_directory}/portal_tenant.so", f"{extension}/portal_tenant.control",
                 f"{extension}/portal_tenant--1.0.sql", REMOTE_SOURCES):
        installed = db.file(path)
        assert installed.user == "root" and installed.group == "root" and not installed.mode & 0o022, path
    for tool in (*BUILD_PACKAGES, headers_package(PG.major), "clang-19"):  # purged; the headers never installed
        assert not db.package(tool).is_installed, tool
