"""The deploy tier runs on one converged fleet: the first test of any file finds it deployed."""

import pytest

from tests.e2e.test_deploy import deploy


@pytest.fixture(scope="session", autouse=True)
def deployed():
    deploy()
