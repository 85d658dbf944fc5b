"""The bridge, one network namespace and veth link per host, and the subnet safety check."""

import ipaddress
import json
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from fleet.errors import FleetError
from fleet.system import run


def colliding_routes(subnet, route_text, own_bridge):
    """Routes on this machine that overlap the fleet's subnet (the default route and our own bridge aside)."""
    collisions = []
    for line in route_text.splitlines():
        words = line.split()
        if not words or words[0] == "default":
            continue
        if "dev" in words and words[words.index("dev") + 1] == own_bridge:
            continue
        try:
            destination = ipaddress.IPv4Network(words[0], strict=False)
        except ValueError:
            continue
        if destination.overlaps(subnet):
            collisions.append(line.strip())
    return collisions


def check_subnet(topology, route_text, upstream_addresses):
    """Refuse a subnet that would shadow a route or the apt mirror the proxy downloads from."""
    collisions = colliding_routes(topology.subnet, route_text, topology.bridge)
    if collisions:
        raise FleetError(
            f"subnet {topology.subnet} collides with route '{collisions[0]}' on this machine; "
            f"pick a free subnet in {topology.source}"
        )
    shadowed = [a for a in upstream_addresses if ipaddress.ip_address(a) in topology.subnet]
    if shadowed:
        raise FleetError(
            f"subnet {topology.subnet} contains {shadowed[0]}, the address of the mirror {topology.mirror}; "
            f"pick another subnet in {topology.source}"
        )


def mirror_addresses(mirror):
    try:
        infos = socket.getaddrinfo(urlparse(mirror).hostname, 80, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FleetError(f"cannot resolve the mirror {mirror} ({exc}); check the machine's DNS") from None
    return sorted({info[4][0] for info in infos})


def routes():
    return run(["ip", "-4", "route", "show"]).stdout


def link(name, netns=None):
    """The link's `ip -j` record, or None."""
    argv = ["ip", "-j"] + (["-n", netns] if netns else []) + ["link", "show", "dev", name]
    result = run(argv, check=False)
    return json.loads(result.stdout)[0] if result.returncode == 0 else None


def link_is_up(name):
    record = link(name)
    return bool(record) and "UP" in record.get("flags", [])


def netns_exists(name):
    return Path("/run/netns", name).exists()


def ensure_bridge(topology):
    gateway = f"{topology.gateway}/{topology.subnet.prefixlen}"
    if not link(topology.bridge):
        run(["ip", "link", "add", topology.bridge, "type", "bridge"])
    addresses = run(["ip", "-4", "-o", "addr", "show", "dev", topology.bridge]).stdout
    if gateway not in addresses:
        run(["ip", "addr", "add", gateway, "dev", topology.bridge])
    run(["ip", "link", "set", topology.bridge, "up"])


def ensure_host_link(topology, host):
    """The host's namespace with eth0 addressed and up, its peer on the bridge. Repairs a partial leftover."""
    if not netns_exists(host.netns):
        run(["ip", "netns", "add", host.netns])
    if not link("eth0", host.netns):
        if link(host.veth):  # a machine-side end without its peer: left over, start again
            run(["ip", "link", "del", host.veth])
        run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
    cidr = f"{host.address}/{topology.subnet.prefixlen}"
    if cidr not in run(["ip", "-n", host.netns, "-4", "-o", "addr", "show", "dev", "eth0"]).stdout:
        run(["ip", "-n", host.netns, "addr", "add", cidr, "dev", "eth0"])
    run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
    run(["ip", "-n", host.netns, "link", "set", "eth0", "up"])
    run(["ip", "link", "set", host.veth, "master", topology.bridge])
    run(["ip", "link", "set", host.veth, "up"])


def set_link(host, up):
    run(["ip", "link", "set", host.veth, "up" if up else "down"])


def remove_host_link(host):
    if netns_exists(host.netns):
        run(["ip", "netns", "del", host.netns])  # deletes eth0 and, with it and asynchronously, its veth peer
    deadline = time.monotonic() + 10
    while link(host.veth):
        if time.monotonic() > deadline:
            raise FleetError(f"link {host.veth} of {host.name} would not go away; remove it with `ip link del {host.veth}`")
        run(["ip", "link", "del", host.veth], check=False)  # may already be on its way out
        time.sleep(0.1)


def remove_bridge(topology):
    if link(topology.bridge):
        run(["ip", "link", "del", topology.bridge])
