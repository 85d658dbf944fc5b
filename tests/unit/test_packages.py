"""When an install refreshes the package index: only for a missing package, and once per host and run."""

from types import SimpleNamespace

import pytest

from deploys import packages


@pytest.fixture
def planned(monkeypatch):
    """The apt.packages calls `install` plans, on a fake host that has `installed`."""
    calls = []
    monkeypatch.setattr(packages, "_refreshed", set())
    monkeypatch.setattr(packages, "_installed", {})
    monkeypatch.setattr(packages.apt, "packages", lambda **kwargs: calls.append(kwargs))

    def on_host(name, installed):
        monkeypatch.setattr(packages, "host", SimpleNamespace(name=name, get_fact=lambda fact: listings.append(name)
                                                              or installed))
    listings = []
    return calls, on_host, listings


def test_a_host_with_every_package_refreshes_nothing_however_old_its_index(planned):
    calls, on_host, listings = planned
    on_host("pg-1", {"pgbouncer": ["1.24"], "haproxy": ["3.0"], "socat": ["1.8"]})
    packages.install("PgBouncer", packages=["pgbouncer"])
    packages.install("HAProxy", packages=["haproxy", "socat"], no_recommends=True)
    assert [c["update"] for c in calls] == [False, False]
    assert calls[1] == {"name": "HAProxy", "packages": ["haproxy", "socat"], "update": False,
                        "cache_time": packages.INDEX_MAX_AGE_S, "no_recommends": True}
    assert listings == ["pg-1"]  # the host's packages listed once per run


def test_the_first_install_of_a_missing_package_refreshes_once_per_host(planned):
    calls, on_host, _ = planned
    on_host("pg-1", {"python3": ["3.13"]})
    for name, wanted in (("Python", ["python3"]), ("Patroni", ["patroni"]), ("etcd", ["etcd-server"])):
        packages.install(name, packages=wanted)
    on_host("pg-2", {})
    packages.install("Patroni", packages=["patroni"])
    assert [(c["name"], c["update"]) for c in calls] == [("Python", False), ("Patroni", True), ("etcd", False),
                                                         ("Patroni", True)]
