"""The tier's inventory shape, checked before any host is touched."""

import pytest

from deploys.base import inventory_problem

FLEET = {"database": ["pg-1", "pg-2", "pg-3"], "pgbouncer": ["pgbouncer-1", "pgbouncer-2"]}


def test_the_fleet_and_a_single_database_host_are_fine():
    assert inventory_problem(FLEET) is None
    assert inventory_problem({**FLEET, "database": ["pg-1"]}) is None


@pytest.mark.parametrize(
    "groups, message",
    [
        ({**FLEET, "database": []}, "group database is empty or missing"),
        ({"pgbouncer": ["pgbouncer-1"]}, "group database is empty or missing"),
        ({**FLEET, "pgbouncer": []}, "group pgbouncer is empty or missing"),
        ({**FLEET, "primary": ["pg-1"]}, "the inventory has group(s) primary: the database hosts are one group"),
        ({"primary": ["pg-1"], "replicas": ["pg-2"], "pgbouncer": ["pgbouncer-1"]}, "group(s) primary, replicas"),
    ],
)
def test_bad_shapes_are_one_line_saying_what_to_do(groups, message):
    problem = inventory_problem(groups)
    assert message in problem and "\n" not in problem
