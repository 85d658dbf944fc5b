import pytest

from fleet.layout import Layout


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """A fleet layout in a scratch dir, also picked up by `fleet` commands run in-process."""
    for name, sub in (("FLEET_STATE_ROOT", "state"), ("FLEET_CACHE_ROOT", "cache"), ("FLEET_LOCAL_DIR", "local")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    return Layout()
