"""The base backup program's parts that need neither S3 nor PostgreSQL: WAL ranges from a manifest, LSN order,
the choice of backup for a target."""

import json

import pytest

from hostside import base_backup
from hostside.base_backup import Backups, lsn_value, wal_range



def test_wal_range_comes_from_the_manifest(tmp_path):
    manifest = tmp_path / "backup_manifest"
    manifest.write_text(json.dumps({"WAL-Ranges": [{"Timeline": 2, "Start-LSN": "0/5000028", "End-LSN": "0/5000120"}]}))
    assert wal_range(manifest) == (2, "0/5000028", "0/5000120")


def test_lsns_compare_as_numbers():
    assert lsn_value("1/0") > lsn_value("0/FFFFFFFF") > lsn_value("0/A000000") > lsn_value("0/9FFFFFF")


class Listed(Backups):
    """Backups whose records are given, for choose(), in a prefix that cluster `owner` claimed (None: unclaimed)."""

    def __init__(self, records, owner="7"):
        super().__init__({"bucket": "b", "prefix": "p", "system_identifier": "7", "bin_directory": "/nonexistent"})
        self.given = records
        self.archive.owner = lambda: owner

    def records(self):
        return self.given


RECORDS = [
    {"id": "1", "system_identifier": "7", "verified": True, "finished_at": 100.0, "end_lsn": "0/3000000"},
    {"id": "2", "system_identifier": "7", "verified": False, "finished_at": 200.0, "end_lsn": "0/5000000"},
    {"id": "3", "system_identifier": "7", "verified": True, "finished_at": 300.0, "end_lsn": "0/7000000"},
    {"id": "4", "system_identifier": "8", "verified": True, "finished_at": 400.0, "end_lsn": "0/9000000"},
]


@pytest.mark.parametrize("time, lsn, chosen", [(None, None, "3"), (250.0, None, "1"), (301.0, None, "3"),
                                               (None, "0/6FFFFFF", "1"), (None, "0/7000000", "3")])
def test_the_newest_verified_backup_of_this_cluster_ending_before_the_target(time, lsn, chosen):
    assert Listed(RECORDS).choose(time, lsn)["id"] == chosen


@pytest.mark.parametrize("owner, chosen", [("8", "4"), (None, "3")])
def test_the_backups_chosen_are_the_prefix_owners_even_from_another_clusters_host(owner, chosen):
    # A staging host (system identifier 7) restoring prod's prefix (claimed by 8) restores prod's backups.
    assert Listed(RECORDS, owner).choose()["id"] == chosen


def test_no_backup_before_the_target_is_an_error():
    with pytest.raises(base_backup.wal_archive.ArchiveError, match="no verified backup of this cluster ends before the target"):
        Listed(RECORDS).choose(50.0)


def test_cli_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        base_backup.main(["base_backup.py", "restore"])
    assert exited.value.code == 2


def test_segment_numbers_match_wal_file_names():
    # 000000010000000200000003 holds LSN 2/03000000..2/03FFFFFF
    assert base_backup.segment_number("2/3000000") == 2 * 256 + 3 == base_backup.segment_number("2/3FFFFFF")


def metrics_of(path):
    return dict(line.split() for line in path.read_text().splitlines() if not line.startswith("#"))


def test_a_backup_is_recorded_for_monitoring(tmp_path, monkeypatch):
    monkeypatch.setenv("MCP_METRICS_DIR", str(tmp_path))
    base_backup.record_backup({"started_at": 1000.0, "finished_at": 1090.5, "size_bytes": 123, "verified": True})
    assert metrics_of(tmp_path / "base_backup.prom") == {
        "mcp_base_backup_last_success_timestamp_seconds": "1090.5", "mcp_base_backup_size_bytes": "123",
        "mcp_base_backup_duration_seconds": "90.5", "mcp_base_backup_verified": "1"}
