"""Post-deploy checks for any inventory: `pytest tests/infra --inventory inventory/<env>.py`.

Hosts, groups and ssh settings come from the same pyinfra inventory the deploy used, so the checks
reach exactly what was deployed, with the same pinned host keys.
"""

import json
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


# Fixture name -> the inventory groups whose hosts it runs on (None: every host). The leader and the replicas are
# not inventory groups: Patroni says which is which, asked once per run (leading_targets).
TARGET_FIXTURES = {"target": None, "tier_target": {"database", "pgbouncer", "etcd"}, "db_target": {"database"},
                   "pgbouncer_target": {"pgbouncer"}}


def etcd_members(targets):
    """The etcd group's hosts, else the database hosts (deploys/etcd.py)."""
    return [t for t in targets if "etcd" in t.groups] or [t for t in targets if "database" in t.groups]


def patroni_members(targets):
    """{member: Patroni's view} from the first database host whose Patroni answers ({} when none does)."""
    for target in (t for t in targets if "database" in t.groups):
        out = target.host.run("/usr/local/sbin/mcp-cluster members").stdout.strip()
        if out and out != "{}":
            return {m["name"]: m for m in json.loads(out).get("members", [])}
    return {}


def pytest_generate_tests(metafunc):
    inventory = metafunc.config.getoption("inventory")
    for fixture, groups in TARGET_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            targets = [t for t in load_targets(inventory) if groups is None or groups & t.groups]
            metafunc.parametrize(fixture, targets, ids=[t.name for t in targets], scope="module")
    for fixture in ("primary_target", "replica_target", "etcd_target"):
        if fixture in metafunc.fixturenames:
            targets = load_targets(inventory)
            if fixture == "etcd_target":
                chosen = etcd_members(targets)
            else:
                roles = {name: m["role"] for name, m in patroni_members(targets).items()}
                chosen = [t for t in targets if "database" in t.groups
                          and (roles.get(t.name) == "leader") == (fixture == "primary_target")]
            metafunc.parametrize(fixture, chosen, ids=[t.name for t in chosen], scope="module")


@pytest.fixture(scope="session")
def targets(request):
    """Every host of the inventory by name, for checks that read one host about another."""
    return {t.name: t for t in load_targets(request.config.getoption("inventory"))}


@pytest.fixture(scope="session")
def members(targets):
    """Patroni's view of the cluster, once for the run."""
    return patroni_members(list(targets.values()))
