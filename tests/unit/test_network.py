"""The subnet safety check, against this machine's kind of routing table."""

import ipaddress

import pytest

from fleet.errors import FleetError
from fleet.network import check_subnet, colliding_routes
from fleet.topology import load, parse

# What `ip -4 route show` prints on these machines, with the fleet up.
ROUTES = """default via 192.0.2.1 dev eth0
192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2
198.51.100.0/24 dev mcpfleet0 proto kernel scope link src 198.51.100.1
"""


def topology_on(subnet):
    raw = {
        "subnet": subnet, "bridge": "mcpfleet0", "suite": "trixie", "mirror": "http://deb.debian.org/debian",
        "hosts": {"p": {"address": str(ipaddress.ip_network(subnet)[11]), "groups": ["database"]},
                  "s": {"address": str(ipaddress.ip_network(subnet)[12]), "groups": ["s3"]}},
    }
    return parse(raw, "fleet/topology.yaml")


def test_default_subnet_is_free_here_and_our_own_bridge_route_is_not_a_collision():
    check_subnet(load(), ROUTES, ["203.0.113.80"])


def test_uplink_subnet_is_refused_naming_the_route():
    with pytest.raises(FleetError) as raised:
        check_subnet(topology_on("192.0.2.0/24"), ROUTES, ["203.0.113.80"])
    assert "collides with route '192.0.2.0/24 dev eth0" in str(raised.value)
    assert "fleet/topology.yaml" in str(raised.value)


def test_a_wider_subnet_that_contains_a_route_is_refused():
    assert colliding_routes(topology_on("192.0.0.0/16").subnet, ROUTES, "mcpfleet0")


def test_mirror_subnet_is_refused_even_without_a_route():
    with pytest.raises(FleetError, match="contains 203.0.113.80, the address of the mirror"):
        check_subnet(topology_on("203.0.113.0/24"), ROUTES, ["203.0.113.80"])


def test_another_bridge_on_our_subnet_is_a_collision():
    foreign = "198.51.100.0/24 dev otherbr proto kernel scope link src 198.51.100.1\n"
    with pytest.raises(FleetError, match="collides with route '198.51.100.0/24 dev otherbr"):
        check_subnet(load(), foreign, [])
