"""Post-deploy checks for any inventory: `pytest tests/infra --inventory inventory/<env>.py`.

Hosts, groups and ssh settings come from the same pyinfra inventory the deploy used, so the checks
reach exactly what was deployed, with the same pinned host keys.
"""

import runpy
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra


def pytest_addoption(parser):
    parser.addoption("--inventory", default="inventory/local.py", help="pyinfra inventory file to check")


@dataclass
class Target:
    name: str
    address: str
    groups: frozenset
    host: object  # testinfra Host


def load_targets(inventory_file):
    namespace = runpy.run_path(inventory_file)
    inventory_group = Path(inventory_file).stem
    members = {}
    for group, entries in namespace.items():
        if group.startswith("_") or not isinstance(entries, list):
            continue
        for entry in entries:
            name, data = entry if isinstance(entry, tuple) else (entry, {})
            members.setdefault(name, [set(), data])[0].add(group)
    targets = []
    for name, (groups, data) in members.items():
        extra = []
        if data.get("ssh_known_hosts_file"):
            extra += ["-o", f"UserKnownHostsFile={data['ssh_known_hosts_file']}"]
        if data.get("ssh_strict_host_key_checking"):
            extra += ["-o", f"StrictHostKeyChecking={data['ssh_strict_host_key_checking']}"]
        user = data.get("ssh_user", "root")
        spec = f"ssh://{user}@{data.get('ssh_hostname', name)}:{data.get('ssh_port', 22)}"
        host = testinfra.get_host(spec, ssh_identity_file=data.get("ssh_key"), ssh_extra_args=shlex.join(extra) or None,
                                  sudo=user != "root")
        targets.append(Target(name, data.get("ssh_hostname", name), frozenset(groups | {inventory_group}), host))
    return targets


# Fixture name -> the inventory groups whose hosts it runs on (None: every host).
TARGET_FIXTURES = {"target": None, "tier_target": {"primary", "replicas", "pgbouncer"},
                   "db_target": {"primary", "replicas"}, "primary_target": {"primary"},
                   "replica_target": {"replicas"}, "pgbouncer_target": {"pgbouncer"}}


def pytest_generate_tests(metafunc):
    for fixture, groups in TARGET_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            targets = [t for t in load_targets(metafunc.config.getoption("inventory")) if groups is None or groups & t.groups]
            metafunc.parametrize(fixture, targets, ids=[t.name for t in targets], scope="module")


@pytest.fixture(scope="session")
def targets(request):
    """Every host of the inventory by name, for checks that read one host about another."""
    return {t.name: t for t in load_targets(request.config.getoption("inventory"))}
