"""The machine-wide state file: who owns the fleet, and a torn write does not wedge `fleet`."""

from fleet.layout import Layout


def test_state_round_trip_records_the_owner(layout):
    assert layout.read_state() is None
    layout.write_state(subnet="198.51.100.0/24")
    layout.write_state(base="/var/cache/x")
    assert layout.read_state() == {"owner": layout.owner, "subnet": "198.51.100.0/24", "base": "/var/cache/x"}


def test_a_torn_state_file_reads_as_ours(layout):
    layout.state_root.mkdir(parents=True)
    layout.state_file.write_text('{"owner": "/work/ma')
    assert layout.read_state() == {}


def test_paths_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEET_STATE_ROOT", str(tmp_path / "s"))
    assert Layout().state_file == tmp_path / "s" / "state.json"
