import pytest

from tests.fleet_helpers import fleet


@pytest.fixture(scope="session")
def fleet_up():
    """One fleet for the whole tier: `fleet up` (from nothing when `make test` ran `fleet down` first)."""
    return fleet("up").stdout
