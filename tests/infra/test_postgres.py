"""PostgreSQL on the database hosts (groups primary and replicas)."""

import pytest

PACKAGES = ["postgresql-17", "postgresql-client-17", "postgresql-common", "postgresql-client-common"]


@pytest.fixture
def db(db_target):
    return db_target.host


def psql(host, sql):
    return host.check_output("runuser -u postgres -- psql -XtAc %s", sql)


def test_postgresql_17_runs_and_starts_at_boot(db):
    assert db.service("postgresql@17-main").is_running
    assert db.service("postgresql").is_enabled
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


def test_postgresql_conf_is_rendered_by_the_deploy(db):
    conf = db.file("/etc/postgresql/17/main/postgresql.conf")
    assert conf.user == "postgres" and conf.mode == 0o644
    assert conf.contains("^# Rendered by deploy.py")


def test_listens_on_loopback_only_until_tls_and_pg_hba_are_deployed(db):
    assert db.socket("tcp://127.0.0.1:5432").is_listening
    assert not db.socket("tcp://0.0.0.0:5432").is_listening
