"""Debian packages for every component, installed one way: the package index is refreshed only when a package is
missing, once per host and run (and not if refreshed within the hour). A deploy of a host that has every package
runs no `apt-get update`, however long since the last one: an hourly refresh would make every later deploy report a
change. A minor update of the held packages refreshes the index by hand first (docs/postgres.md)."""

from pyinfra import host
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt

INDEX_MAX_AGE_S = 3600
_refreshed = set()  # hosts whose index this run already refreshes: one `apt-get update` serves every later install
_installed = {}  # host name: its packages as the plan found them, listed once per run (no install removes one)


def install(name, packages, **options):
    """apt.packages for `packages`, with an index refresh first when one of them is not installed yet."""
    if host.name not in _installed:
        _installed[host.name] = host.get_fact(DebPackages)
    refresh = host.name not in _refreshed and any(p not in _installed[host.name] for p in packages)
    if refresh:
        _refreshed.add(host.name)
    apt.packages(name=name, packages=packages, update=refresh, cache_time=INDEX_MAX_AGE_S, **options)
