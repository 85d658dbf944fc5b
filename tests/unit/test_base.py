"""The tier's inventory shape, checked before any host is touched."""

import pytest

from deploys.base import inventory_problem

FLEET = {"primary": ["pg-primary"], "replicas": ["pg-replica-1", "pg-replica-2"], "pgbouncer": ["pgbouncer-1"]}


def test_the_fleet_and_a_tier_without_replicas_are_fine():
    assert inventory_problem(FLEET) is None
    assert inventory_problem({**FLEET, "replicas": []}) is None


@pytest.mark.parametrize(
    "groups, message",
    [
        ({**FLEET, "primary": ["pg-primary", "pg-replica-1"]},
         "exactly one host in group primary, has 2 (pg-primary, pg-replica-1)"),
        ({**FLEET, "primary": []}, "exactly one host in group primary, has 0 (none); a replica with no primary"),
        ({"replicas": ["pg-replica-1"], "pgbouncer": ["pgbouncer-1"]}, "has 0 (none)"),
        ({**FLEET, "pgbouncer": []}, "group pgbouncer is empty or missing"),
        ({**FLEET, "replicas": ["pg-primary"]}, "pg-primary is in both groups primary and replicas"),
    ],
)
def test_bad_shapes_are_one_line_saying_what_to_do(groups, message):
    problem = inventory_problem(groups)
    assert message in problem and "\n" not in problem
