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
