"""The fleet's shape, read and validated from topology.yaml."""

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from fleet.errors import FleetError

TOPOLOGY_FILE = Path(__file__).with_name("topology.yaml")
GROUPS = ("database", "pgbouncer", "etcd", "s3")
SINGLETON_GROUPS = ("s3",)
# A host name is also a hostname and part of a network namespace name: keep it short and plain.
HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
# Linux interface names are at most 15 characters.
BRIDGE_NAME = re.compile(r"^[a-z][a-z0-9]{0,14}$")
KNOWN_KEYS = {"subnet", "bridge", "suite", "mirror", "hosts"}


@dataclass(frozen=True)
class Host:
    name: str
    address: ipaddress.IPv4Address
    groups: tuple
    offset: int  # position of the address inside the subnet, used for short interface names

    @property
    def netns(self):
        return f"mcpf-{self.name}"

    @property
    def veth(self):
        """The machine-side end of the host's link; taking it down cuts the host off."""
        return f"mf-{self.offset}"


@dataclass(frozen=True)
class Topology:
    subnet: ipaddress.IPv4Network
    bridge: str
    suite: str
    mirror: str
    hosts: tuple
    source: str = str(TOPOLOGY_FILE)

    @property
    def gateway(self):
        """The bridge's own address: the control machine and the apt proxy, as the hosts see them."""
        return self.subnet.network_address + 1

    def host(self, name):
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts)
        raise FleetError(f"unknown host {name!r}: the fleet has {known} (see {self.source})")

    def group(self, group):
        return [h for h in self.hosts if group in h.groups]


def load(path=TOPOLOGY_FILE):
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FleetError(f"{path}: cannot read the topology ({exc.__class__.__name__}: {exc})") from None
    return parse(raw, str(path))


def parse(raw, source):
    def fail(what):
        raise FleetError(f"{source}: {what}")

    if not isinstance(raw, dict):
        fail("must be a mapping with subnet, bridge, suite, mirror and hosts")
    missing = sorted(KNOWN_KEYS - raw.keys())
    if missing:
        fail(f"missing key(s) {', '.join(missing)}")
    unknown = sorted(raw.keys() - KNOWN_KEYS)
    if unknown:
        fail(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_KEYS))}")

    try:
        subnet = ipaddress.IPv4Network(str(raw["subnet"]))
    except ValueError as exc:
        fail(f"subnet {raw['subnet']!r} is not an IPv4 network ({exc})")
    if subnet.prefixlen > 28:
        fail(f"subnet {subnet} is too small; use a /28 or larger")
    bridge = str(raw["bridge"])
    if not BRIDGE_NAME.match(bridge):
        fail(f"bridge {bridge!r} must be 1-15 lower-case letters and digits")
    if not isinstance(raw["hosts"], dict) or not raw["hosts"]:
        fail("hosts must map host names to {address, groups}")

    gateway = subnet.network_address + 1
    hosts, seen_addresses = [], {}
    for name, spec in raw["hosts"].items():
        if not HOST_NAME.match(str(name)):
            fail(f"host name {name!r} must be lower-case letters, digits and '-', starting with a letter")
        if not isinstance(spec, dict) or set(spec) != {"address", "groups"}:
            fail(f"host {name}: give exactly 'address' and 'groups'")
        try:
            address = ipaddress.IPv4Address(str(spec["address"]))
        except ValueError:
            fail(f"host {name}: address {spec['address']!r} is not an IPv4 address")
        if address not in subnet or address in (subnet.network_address, subnet.broadcast_address, gateway):
            fail(f"host {name}: address {address} must be a host address of {subnet} other than {gateway} (the bridge)")
        if address in seen_addresses:
            fail(f"host {name}: address {address} is already {seen_addresses[address]}'s")
        seen_addresses[address] = name
        groups = spec["groups"]
        if not isinstance(groups, list) or not groups or not set(groups) <= set(GROUPS):
            fail(f"host {name}: groups must be a non-empty list of {', '.join(GROUPS)}")
        offset = int(address) - int(subnet.network_address)
        hosts.append(Host(str(name), address, tuple(groups), offset))

    for group in SINGLETON_GROUPS:
        members = [h.name for h in hosts if group in h.groups]
        if len(members) != 1:
            fail(f"group {group} needs exactly one host, has {len(members)} ({', '.join(members) or 'none'})")

    return Topology(subnet, bridge, str(raw["suite"]), str(raw["mirror"]).rstrip("/"), tuple(hosts), source)
