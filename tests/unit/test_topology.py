"""The topology file: the shipped one is valid, and every kind of mistake is one line naming the key."""

import copy

import pytest

from fleet.errors import FleetError
from fleet.topology import load, parse

GOOD = {
    "subnet": "198.51.100.0/24",
    "bridge": "mcpfleet0",
    "suite": "trixie",
    "mirror": "http://deb.debian.org/debian/",
    "hosts": {
        "pg-1": {"address": "198.51.100.11", "groups": ["database"]},
        "pg-2": {"address": "198.51.100.12", "groups": ["database"]},
        "s3": {"address": "198.51.100.30", "groups": ["s3"]},
    },
}


def with_change(path, value):
    raw = copy.deepcopy(GOOD)
    node = raw
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


def test_shipped_topology_is_the_documented_default():
    topology = load()
    assert [h.name for h in topology.hosts] == ["pg-1", "pg-2", "pg-3", "pgbouncer-1", "pgbouncer-2", "s3"]
    assert str(topology.gateway) == "198.51.100.1"
    assert [h.name for h in topology.group("database")] == ["pg-1", "pg-2", "pg-3"]


def test_parse_derives_names_and_strips_the_mirror_slash():
    topology = parse(GOOD, "t.yaml")
    first = topology.host("pg-1")
    assert (first.netns, first.veth, first.offset) == ("mcpf-pg-1", "mf-11", 11)
    assert topology.mirror == "http://deb.debian.org/debian"


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("subnet",), KeyError, "missing key(s) subnet"),
        (("color",), "blue", "unknown key(s) color"),
        (("subnet",), "198.51.100.0/33", "is not an IPv4 network"),
        (("subnet",), "198.51.100.0/30", "too small"),
        (("bridge",), "this-bridge-name-is-long", "bridge"),
        (("hosts", "pg-1", "address"), "10.0.0.5", "must be a host address of 198.51.100.0/24"),
        (("hosts", "pg-1", "address"), "198.51.100.1", "other than 198.51.100.1 (the bridge)"),
        (("hosts", "pg-1", "address"), "198.51.100.12", "host pg-2: address 198.51.100.12 is already pg-1's"),
        (("hosts", "pg-1", "groups"), ["database", "dba"], "groups must be a non-empty list"),
        (("hosts", "s3", "groups"), ["database"], "group s3 needs exactly one host, has 0"),
        (("hosts", "Bad_Name"), {"address": "198.51.100.40", "groups": ["database"]}, "host name 'Bad_Name'"),
        (("hosts", "pg-2", "port"), 22, "give exactly 'address' and 'groups'"),
    ],
)
def test_bad_topology_is_one_line_naming_the_file_and_key(path, value, message):
    with pytest.raises(FleetError) as raised:
        parse(with_change(path, value), "fleet/topology.yaml")
    text = str(raised.value)
    assert text.startswith("fleet/topology.yaml: ")
    assert message in text
    assert "\n" not in text


def test_unknown_host_lists_the_known_ones():
    with pytest.raises(FleetError, match="unknown host 'pg-9'.*pg-1, pg-2, s3"):
        parse(GOOD, "t.yaml").host("pg-9")


def test_unreadable_topology_file(tmp_path):
    bad = tmp_path / "topology.yaml"
    bad.write_text("hosts: [unclosed")
    with pytest.raises(FleetError, match="cannot read the topology"):
        load(bad)
