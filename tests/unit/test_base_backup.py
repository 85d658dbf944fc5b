"""The base backup program's parts that need neither S3 nor PostgreSQL: WAL ranges from a manifest, LSN order,
the choice of backup for a target, which records retention and restores trust, and what retention deletes."""

import datetime
import hashlib
import io
import json
import time

import pytest

from hostside import base_backup
from hostside.base_backup import Backups, lsn_value, wal_range


def test_wal_range_comes_from_the_manifest(tmp_path):
    manifest = tmp_path / "backup_manifest"
    manifest.write_text(json.dumps({"WAL-Ranges": [{"Timeline": 2, "Start-LSN": "0/5000028", "End-LSN": "0/5000120"}]}))
    assert wal_range(manifest) == (2, "0/5000028", "0/5000120")


def test_lsns_compare_as_numbers():
    assert lsn_value("1/0") > lsn_value("0/FFFFFFFF") > lsn_value("0/A000000") > lsn_value("0/9FFFFFF")


class VersionedBucket:
    """The S3 calls Backups makes, over a dict of versions: enough to check what retention and restores trust,
    delete and refuse (the calls themselves are exercised against the fleet's S3 endpoint)."""

    def __init__(self):
        self.versions, self.count = {}, 0  # key -> [version dicts, newest first]

    def put(self, key, body, at, metadata=None, locked_until=None):
        self.count += 1
        self.versions.setdefault(key, []).insert(0, {
            "Key": key, "VersionId": str(self.count), "ETag": hashlib.md5(body).hexdigest(), "Size": len(body),
            "LastModified": datetime.datetime.fromtimestamp(at, datetime.timezone.utc), "body": body,
            "Metadata": metadata or {}, "until": locked_until})

    def get_paginator(self, _):
        return self

    def paginate(self, Bucket, Prefix):
        listed = [dict(v, IsLatest=i == 0) for entries in self.versions.values() for i, v in enumerate(entries)
                  if v["Key"].startswith(Prefix)]
        fields = ("Key", "VersionId", "ETag", "Size", "LastModified", "IsLatest")
        return [{"Versions": [{k: v[k] for k in fields} for v in listed]}]

    def _version(self, Key, VersionId=None):
        return next(v for v in self.versions[Key] if VersionId in (None, v["VersionId"]))

    def get_object(self, Bucket, Key):
        return {"Body": io.BytesIO(self._version(Key)["body"]), "Metadata": self._version(Key)["Metadata"]}

    def head_object(self, Bucket, Key, VersionId=None):
        version = self._version(Key, VersionId)
        until = version["until"] and datetime.datetime.fromtimestamp(version["until"], datetime.timezone.utc)
        return {"Metadata": version["Metadata"], **({"ObjectLockRetainUntilDate": until} if until else {})}

    def delete_objects(self, Bucket, Delete):
        errors = []
        for wanted in Delete["Objects"]:
            version = self._version(wanted["Key"], wanted["VersionId"])
            if version["until"] and version["until"] > time.time():
                errors.append({"Key": wanted["Key"], "Code": "AccessDenied"})
                continue
            self.versions[wanted["Key"]].remove(version)
            if not self.versions[wanted["Key"]]:
                del self.versions[wanted["Key"]]
        return {"Errors": errors} if errors else {}


OWNER, DAY = "7", 86400.0


def in_bucket(s3, backups=(), owner=OWNER):
    """Backups over `s3`, in a prefix `owner` claimed."""
    found = Backups({"bucket": "b", "prefix": "p", "bin_directory": "/nonexistent"})
    found.archive._s3 = s3
    found.archive.owner = lambda: owner
    return found


def write_backup(s3, started, first_lsn, last_lsn, **changes):
    """What Backups.run stores for a backup that started at `started` (epoch seconds) and took a minute; `changes`
    alter the record only, as a forger with the hosts' put-only keys would."""
    backup_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    archive = b"packed " + backup_id.encode()
    manifest = json.dumps({"WAL-Ranges": [{"Timeline": 1, "Start-LSN": first_lsn, "End-LSN": last_lsn}]}).encode()
    record = {"id": backup_id, "system_identifier": OWNER, "timeline": 1, "start_lsn": first_lsn, "end_lsn": last_lsn, "started_at": started, "finished_at": started + 60, "size_bytes": len(archive),
              "sha256": hashlib.sha256(archive).hexdigest(), "verified": True,
              "manifest_sha256": hashlib.sha256(manifest).hexdigest(), "next_xid": int(started) % 10**6, **changes}
    s3.put(f"p/backups/{backup_id}/base.tar.gz", archive, started + 50, {"sha256": hashlib.sha256(archive).hexdigest()})
    s3.put(f"p/backups/{backup_id}/backup_manifest", manifest, started + 55)
    s3.put(f"p/backups/{backup_id}/backup.json", json.dumps(record).encode(), started + 60)
    return backup_id


def write_wal(s3, first, last, at):
    for number in range(first, last + 1):
        s3.put(f"p/wal/00000001{number // 256:08X}{number % 256:08X}", b"wal", at)


NOW = 1_800_000_000.0


def daily_archive(days=5):
    """A backup a day for `days` days, each starting at segment 16 * day, and the WAL between."""
    s3 = VersionedBucket()
    ids = [write_backup(s3, NOW - (days - d) * DAY, f"0/{16 * d + 1:X}000028", f"0/{16 * d + 1:X}000100")
           for d in range(days)]
    write_wal(s3, 1, 16 * days, NOW - days * DAY)
    return s3, ids


def test_another_environments_empty_prefix_has_no_backup_and_needs_no_cluster_of_ours():
    """A restore source's configuration names no data directory: an empty or wrong prefix is "nothing to restore",
    not a KeyError from asking this host's cluster for its system identifier."""
    s3 = VersionedBucket()
    write_wal(s3, 1, 3, NOW)
    assert in_bucket(s3, owner=None).vet(in_bucket(s3, owner=None).versions()) == ([], [])


def test_a_backup_written_as_the_tier_writes_it_is_trusted():
    s3, ids = daily_archive(2)
    trusted, refused = in_bucket(s3).vet(in_bucket(s3).versions())
    assert [r["id"] for r in trusted] == ids and refused == []


@pytest.mark.parametrize("changes, why", [
    ({"finished_at": 0, "start_lsn": "FFFFFFFF/0"}, "its finish time is not when S3 received it"),
    ({"size_bytes": 1}, "its archive's size is not the recorded size"),
    ({"sha256": "0" * 64}, "its archive's stored sha256 is not the recorded one"),
    ({"manifest_sha256": "0" * 64}, "its manifest's sha256 is not the recorded one"),
    ({"start_lsn": "0/1000028"}, "its WAL range is not its manifest's"),
    ({"system_identifier": "8"}, "it is another cluster's"),
    ({"verified": "yes"}, "it is not marked verified"),
    ({"started_at": "soon"}, "malformed"),
])
def test_a_record_that_disagrees_with_s3_or_its_manifest_is_refused(changes, why):
    s3 = VersionedBucket()
    write_backup(s3, NOW - DAY, "0/2000028", "0/2000100", **changes)
    trusted, refused = in_bucket(s3).vet(in_bucket(s3).versions())
    assert trusted == [] and why in refused[0][1]


def test_an_overwritten_record_is_refused():
    s3 = VersionedBucket()
    backup_id = write_backup(s3, NOW - DAY, "0/2000028", "0/2000100")
    key = f"p/backups/{backup_id}/backup.json"
    s3.put(key, s3.versions[key][0]["body"], NOW - DAY + 61)
    assert "backup.json has 2 versions" in in_bucket(s3).vet(in_bucket(s3).versions())[1][0][1]


def test_the_audits_forged_record_deletes_nothing_a_real_backup_needs():
    s3, ids = daily_archive(5)
    # The forgery of the audit: the newest id, verified, finished at 0, starting at the end of WAL.
    forged = write_backup(s3, NOW - 30, "FFFFFFFF/0", "FFFFFFFF/100", finished_at=0)
    before = set(s3.versions)
    deleted, refused, locked = in_bucket(s3).retain(2.5 * DAY, 100, now=NOW)
    assert [backup_id for backup_id, _ in refused] == [forged]
    # The window opens 2.5 days ago: the backup from 3 days ago is where a restore to its first moment starts.
    assert {k.split("/")[2] for k in deleted if "/backups/" in k} == set(ids[:2])
    assert all(f"p/backups/{b}/backup.json" in s3.versions for b in ids[2:] + [forged])
    assert min(k for k in s3.versions if "/wal/" in k) == "p/wal/000000010000000000000021"  # the kept backup's start
    assert set(deleted) == before - set(s3.versions)


def test_wal_a_kept_backup_needs_is_kept_even_when_it_starts_before_the_oldest_kept():
    s3, ids = daily_archive(3)
    # A backup whose record is fine but whose range starts before the one before it (a long-running backup).
    late = write_backup(s3, NOW - DAY / 2, "0/8000028", "0/31000100")
    in_bucket(s3).retain(1.4 * DAY, 100, now=NOW)
    assert "p/wal/000000010000000000000008" in s3.versions and "p/wal/000000010000000000000007" not in s3.versions
    assert f"p/backups/{late}/backup.json" in s3.versions


def test_a_run_that_would_delete_more_than_its_cap_deletes_nothing():
    s3, _ = daily_archive(5)
    before = {k: len(v) for k, v in s3.versions.items()}
    with pytest.raises(base_backup.RetentionRefused, match=r"would delete \d+ of the prefix's \d+ object versions, "
                                                           r"more than 25% \(backup_retention_max_delete_percent\)"):
        in_bucket(s3).retain(0.5 * DAY, 25, now=NOW)
    assert {k: len(v) for k, v in s3.versions.items()} == before


def test_locked_versions_are_kept_and_counted():
    s3, ids = daily_archive(3)
    s3.versions[f"p/backups/{ids[0]}/base.tar.gz"][0]["until"] = NOW + DAY
    deleted, _, locked = in_bucket(s3).retain(0.5 * DAY, 100, now=NOW)
    assert locked == 1 and f"p/backups/{ids[0]}/base.tar.gz" in s3.versions and deleted


def test_the_newest_trusted_backup_of_the_prefix_owner_ending_before_the_target_is_chosen():
    s3, ids = daily_archive(3)
    backups = in_bucket(s3)
    assert backups.choose()[-1]["id"] == ids[-1]
    assert backups.choose(target_time=NOW - 1.5 * DAY)[-1]["id"] == ids[1]
    assert backups.choose(target_lsn="0/210000FF")[-1]["id"] == ids[1]
    xids = [r["next_xid"] for r in backups.vet(backups.versions())[0]]
    assert xids == sorted(xids)
    assert backups.choose(target_xid=str(xids[2] - 1))[-1]["id"] == ids[1]  # assigned before the newest ended
    assert backups.choose(target_xid=str(xids[2]))[-1]["id"] == ids[2]
    write_backup(s3, NOW - 100, "0/40000028", "0/40000100", system_identifier="8")  # another cluster's
    assert backups.choose()[-1]["id"] == ids[-1]
    assert in_bucket(s3, owner="8").choose()[-1]["id"] > ids[-1]  # a staging host restoring prod's prefix


def test_no_backup_before_the_target_is_an_error_with_the_archives_range():
    s3, _ = daily_archive(2)
    with pytest.raises(base_backup.wal_archive.ArchiveError, match="REFUSED: the target is before the oldest verified "
                       r"backup ended: the archive restores from .* to .* \(where backup \d+T\d+Z ended\)"):
        in_bucket(s3).choose(NOW - 10 * DAY)
    with pytest.raises(base_backup.wal_archive.ArchiveError, match="no verified backup of this cluster ends before the target"):
        in_bucket(s3).choose(target_xid=1)  # no record's next xid is that low


def test_a_restore_refuses_when_a_key_it_reads_holds_two_different_versions():
    s3, ids = daily_archive(2)  # the backups start in segments 0x01 and 0x11
    s3.put("p/wal/000000010000000000000005", b"other wal", NOW, {"sha256": "x"})
    assert in_bucket(s3).choose()[-1]["id"] == ids[1]  # it starts after the overwritten segment
    with pytest.raises(base_backup.wal_archive.ArchiveError,
                       match=f"REFUSED: s3://b/p/wal/000000010000000000000005 .* a restore from backup {ids[0]} reads it"):
        in_bucket(s3).choose(target_lsn="0/11000000")


def test_cli_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        base_backup.main(["base_backup.py", "restore"])
    assert exited.value.code == 2


def test_segment_numbers_match_wal_file_names():
    # 000000010000000200000003 holds LSN 2/03000000..2/03FFFFFF
    assert base_backup.segment_number("2/3000000") == 2 * 256 + 3 == base_backup.segment_number("2/3FFFFFF")


def metrics_of(path):
    return dict(line.split() for line in path.read_text().splitlines() if not line.startswith("#"))


def test_a_backup_is_recorded_for_monitoring_with_its_chain(tmp_path, monkeypatch):
    monkeypatch.setenv("MCP_METRICS_DIR", str(tmp_path))
    base_backup.record_backup({"id": "19700101T001640Z", "started_at": 1000.0, "finished_at": 1090.5, "size_bytes": 123,
                               "verified": True, "chain": ["19700101T000001Z", "19700101T000010Z", "19700101T001640Z"]})
    assert metrics_of(tmp_path / "base_backup.prom") == {
        "mcp_base_backup_last_success_timestamp_seconds": "1090.5", "mcp_base_backup_size_bytes": "123",
        "mcp_base_backup_duration_seconds": "90.5", "mcp_base_backup_verified": "1",
        "mcp_base_backup_chain_length": "3", "mcp_base_backup_last_full_timestamp_seconds": "1.0"}
    base_backup.record_backup({"id": "19700101T001640Z", "started_at": 1000.0, "finished_at": 1090.5, "size_bytes": 1,
                               "verified": True})  # a full backup, recorded before chains were
    found = metrics_of(tmp_path / "base_backup.prom")
    assert found["mcp_base_backup_chain_length"] == "1" and found["mcp_base_backup_last_full_timestamp_seconds"] == "1000.0"


def test_a_delete_marker_over_a_locked_version_stays():
    s3, ids = daily_archive(3)
    key = f"p/backups/{ids[0]}/base.tar.gz"
    s3.versions[key][0]["until"] = NOW + DAY
    s3.versions[key].insert(0, {"Key": key, "VersionId": "marker", "DeleteMarker": True})
    unlocked, locked = in_bucket(s3).unlocked([dict(v, DeleteMarker=v.get("DeleteMarker", False))
                                               for v in s3.versions[key]], NOW)
    assert unlocked == [] and locked == 1


WALDUMP = """rmgr: XLOG        len (rec/tot):     54/    54, tx:          0, lsn: 0/1A000060, prev 0/1A000028, desc: RESTORE_POINT e2e-1
rmgr: XLOG        len (rec/tot):     54/    54, tx:          0, lsn: 0/1A0000D8, prev 0/1A000098, desc: RESTORE_POINT e2e-12
rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/1A000110, prev 0/1A0000D8, desc: CHECKPOINT_ONLINE redo 0/1A0000D8
"""


@pytest.mark.parametrize("name, lsn", [("e2e-1", "0/1A000060"), ("e2e-12", "0/1A0000D8"), ("e2e", None), ("e2e-1.", None)])
def test_a_restore_point_is_found_by_its_exact_name_in_pg_waldumps_output(name, lsn):
    assert base_backup.restore_point_in(WALDUMP, name) == lsn


HISTORY = "1\t0/1A0000D8\tno recovery target specified\n"


@pytest.mark.parametrize("archived, short", [
    (["000000010000000000000019", "00000001000000000000001A"], False),  # stopped inside the last segment
    (["000000010000000000000019"], False),
    (["000000010000000000000019", "00000001000000000000001A", "00000001000000000000001C"], True),  # 1B missing
    ([], False),
])
def test_a_restore_without_a_target_must_have_replayed_to_the_archives_last_segment(archived, short):
    found = base_backup.replay_shortfall(HISTORY, archived)
    assert (found is not None) == short
    assert not short or "replay stopped at 0/1A0000D8, but the archive holds timeline 1's WAL up to segment 00000001000000000000001C" in found


def test_a_target_outside_the_archive_is_refused_with_its_range():
    """Before anything is downloaded: PostgreSQL would make the cluster and then stop short of the target."""
    trusted = [{"id": "20261201T100000Z", "finished_at": 1000.0, "end_lsn": "0/3000100"},
               {"id": "20261201T110000Z", "finished_at": 5000.0, "end_lsn": "0/6000100"}]
    segments = {"000000010000000000000007": 6000.0, "000000010000000000000008": 6100.0, "000000020000000000000008": 6200.0}
    problem = base_backup.target_problem
    assert problem(trusted, segments, target_time=3000.0) is None
    assert problem(trusted, segments, target_lsn="0/8FFFFFF") is None
    assert problem(trusted, segments) is None  # to the archive's end: replay finds it
    early = problem(trusted, segments, target_time=999.0)
    assert early.startswith("REFUSED: the target is before the oldest verified backup ended")
    assert "from 1970-01-01 00:16:40+00 (0/3000100, where backup 20261201T100000Z ended)" in early
    assert "to 1970-01-01 01:43:20+00 (segment 000000020000000000000008, the last archived)" in early
    assert problem(trusted, segments, target_lsn="0/3000000").startswith("REFUSED: the target is before")
    late = problem(trusted, segments, target_time=6201.0)
    assert late.startswith("REFUSED: the target is past the archive's end") and "pg_switch_wal()" in late
    assert problem(trusted, segments, target_lsn="0/9000000").startswith("REFUSED: the target is past")
    # No WAL archived since the newest backup: the archive ends where that backup ended.
    assert "to 1970-01-01 01:23:20+00 (where backup 20261201T110000Z ended)" in problem(trusted, {}, target_time=5001.0)
    assert problem([], segments, target_time=1.0) is None  # nothing to restore from: choose() says so


def test_archived_segments_are_the_full_segments_still_stored():
    stamp = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
    versions = {f"p/wal/{name}": [{"LastModified": stamp, "DeleteMarker": marker}]
                for name, marker in (("000000010000000000000001", False), ("000000010000000000000002", True),
                                     ("000000010000000000000003.partial", False))}
    versions["p/history/00000002.history"] = [{"LastModified": stamp, "DeleteMarker": False}]
    assert base_backup.archived_segments(versions, "p") == {"000000010000000000000001": stamp.timestamp()}


def chained_archive(days=4):
    """A full backup `days` days ago, then an incremental one a day on top of the one before, and the WAL between."""
    s3, ids = VersionedBucket(), []
    for d in range(days):
        started = NOW - (days - d) * DAY
        backup_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
        ids.append(write_backup(s3, started, f"0/{16 * d + 1:X}000028", f"0/{16 * d + 1:X}000100",
                                chain=ids[:d] + [backup_id] if d else [backup_id]))
    write_wal(s3, 1, 16 * days, NOW - days * DAY)
    return s3, ids


def test_an_incremental_backup_restores_with_its_whole_chain():
    s3, ids = chained_archive(4)
    assert [r["id"] for r in in_bucket(s3).choose()] == ids
    assert [r["id"] for r in in_bucket(s3).choose(target_time=NOW - 2.5 * DAY)] == ids[:2]


@pytest.mark.parametrize("break_it", ["overwrite", "delete"])
def test_a_broken_link_refuses_every_backup_built_on_it_and_names_it(break_it):
    s3, ids = chained_archive(4)
    key = f"p/backups/{ids[1]}/base.tar.gz"
    if break_it == "overwrite":
        s3.put(key, b"altered", NOW - 2 * DAY)
    else:
        del s3.versions[key]
    backups = in_bucket(s3)
    trusted, refused = backups.vet(backups.versions())
    assert [r["id"] for r in trusted] == ids[:1]
    assert [backup_id for backup_id, _ in refused] == ids[1:]
    assert all(f"backup {ids[1]}, a link of its chain, is missing or refused" in why for _, why in refused[1:])
    assert [r["id"] for r in backups.choose()] == ids[:1]  # the full backup, and the WAL since: never the broken chain


@pytest.mark.parametrize("changes, why", [
    ({"timeline": 2}, "it does not follow backup"),
    ({"start_lsn": "0/10000FF", "end_lsn": "0/11000100"}, "it does not follow backup"),  # starts before its parent ended
    ({"chain": ["20261101T000000Z"]}, "does not end with it"),
])
def test_an_incremental_that_does_not_follow_its_parent_is_refused(changes, why):
    s3, ids = chained_archive(1)
    started = NOW - DAY / 2
    child = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    record = {"timeline": 1, "start_lsn": "0/21000028", "end_lsn": "0/21000100", "chain": [ids[0], child], **changes}
    manifest_range = {k: record[k] for k in ("start_lsn", "end_lsn")}
    write_backup(s3, started, manifest_range["start_lsn"], manifest_range["end_lsn"], **record)
    if changes.get("timeline"):  # the manifest says so too, or the record is refused before its chain is looked at
        manifest = json.dumps({"WAL-Ranges": [{"Timeline": 2, "Start-LSN": record["start_lsn"], "End-LSN": record["end_lsn"]}]}).encode()
        s3.versions[f"p/backups/{child}/backup_manifest"] = []
        s3.put(f"p/backups/{child}/backup_manifest", manifest, started + 55)
        key = f"p/backups/{child}/backup.json"
        body = json.loads(s3.versions[key][0]["body"])
        s3.versions[key] = []
        s3.put(key, json.dumps(dict(body, manifest_sha256=hashlib.sha256(manifest).hexdigest())).encode(), started + 60)
    trusted, refused = in_bucket(s3).vet(in_bucket(s3).versions())
    assert [r["id"] for r in trusted] == ids and refused[0][0] == child and why in refused[0][1]


def test_retention_keeps_every_link_of_a_kept_incremental_and_only_the_wal_it_replays():
    s3, ids = chained_archive(5)
    deleted, refused, _ = in_bucket(s3).retain(1.5 * DAY, 100, now=NOW)
    # The window opens 1.5 days ago: the incremental of 2 days ago starts a restore to that moment, on its chain.
    assert refused == [] and not [k for k in deleted if "/backups/" in k]
    assert all(f"p/backups/{b}/backup.json" in s3.versions for b in ids)
    assert min(k for k in s3.versions if "/wal/" in k) == "p/wal/000000010000000000000031"  # its start (day 3)


def test_after_a_new_full_backup_the_old_chain_goes_whole():
    s3, ids = chained_archive(3)
    full = write_backup(s3, NOW - DAY / 2, "0/41000028", "0/41000100")
    write_wal(s3, 49, 65, NOW - DAY)
    deleted, _, _ = in_bucket(s3).retain(0.25 * DAY, 100, now=NOW)
    assert {k.split("/")[2] for k in deleted if "/backups/" in k} == set(ids)
    assert [r["id"] for r in in_bucket(s3).choose()] == [full]


@pytest.mark.parametrize("trusted, now, full_every_days, timeline, parent", [
    ([], NOW, 7, 1, None),  # nothing to build on
    ([{"id": "a", "started_at": NOW - DAY, "timeline": 1}], NOW, 0, 1, None),  # every backup full
    ([{"id": "a", "started_at": NOW - DAY, "timeline": 1}], NOW, 7, 1, "a"),
    ([{"id": "a", "started_at": NOW - DAY, "timeline": 1}], NOW, 7, 2, None),  # a failover since: a new timeline
    ([{"id": "a", "started_at": NOW - 7 * DAY, "timeline": 1}, {"id": "b", "started_at": NOW - DAY, "timeline": 1,
      "chain": ["a", "b"]}], NOW, 7, 1, None),  # the chain's full backup is a week old: a new full one
    ([{"id": "a", "started_at": NOW - 6 * DAY, "timeline": 1}, {"id": "b", "started_at": NOW - DAY, "timeline": 1,
      "chain": ["a", "b"]}], NOW, 7, 1, "b"),
])
def test_a_backup_is_incremental_on_the_newest_until_its_chains_full_backup_is_due(trusted, now, full_every_days,
                                                                                   timeline, parent):
    found = base_backup.incremental_parent(trusted, now, full_every_days * DAY, timeline)
    assert (found and found["id"]) == parent


def test_an_incremental_pg_basebackup_that_fails_is_followed_by_a_full_one(tmp_path, monkeypatch, capsys):
    """The WAL summaries may not reach back to the parent (summarize_wal just switched on, or wal_summary_keep_time
    passed): the run takes a full backup instead and says why."""
    s3, ids = chained_archive(1)
    backups = in_bucket(s3)
    backups.archive.s3.download_file = lambda bucket, key, path: open(path, "wb").write(s3.versions[key][0]["body"])
    ran = []
    monkeypatch.setattr(base_backup.subprocess, "run", lambda command, check=False: (
        ran.append(command), type("Done", (), {"returncode": 1 if any("--incremental" in a for a in command) else 0})())[1])
    trusted, _ = backups.vet(backups.versions())
    assert backups.taken("20990101T000000Z", str(tmp_path / "data"), trusted, str(tmp_path)) == []
    assert [any(a.startswith("--incremental=") for a in command) for command in ran] == [True, False]
    assert "the incremental backup failed (above): a full one instead" in capsys.readouterr().out


def test_a_parent_whose_manifest_differs_from_its_record_is_not_built_on(tmp_path):
    s3, ids = chained_archive(1)
    backups = in_bucket(s3)
    backups.archive.s3.download_file = lambda bucket, key, path: open(path, "wb").write(b"another manifest")
    trusted, _ = backups.vet(backups.versions())
    with pytest.raises(base_backup.wal_archive.ArchiveError, match=f"backup {ids[0]}'s manifest does not match its record"):
        backups.taken("20990101T000000Z", str(tmp_path / "data"), trusted, str(tmp_path))


def test_a_kept_copy_serves_only_the_backup_it_is_of_and_any_other_goes(tmp_path):
    kept = base_backup.KeptCopy(str(tmp_path))
    assert kept.of("20990101T000000Z") is None
    (tmp_path / "combined").mkdir()
    (tmp_path / "combined" / "PG_VERSION").write_text("17\n")
    kept.keep("20990101T000000Z", str(tmp_path / "combined"))
    assert not (tmp_path / "combined").exists()
    assert kept.of("20990101T000000Z") == str(tmp_path / "verified" / "data")
    assert (tmp_path / "verified" / "data" / "PG_VERSION").read_text() == "17\n"
    assert kept.of("20990102T000000Z") is None and not (tmp_path / "verified").exists()
    # A copy whose record of what it is never got written (the run died between) is never used.
    (tmp_path / "verified" / "data").mkdir(parents=True)
    assert kept.of(None) is None and not (tmp_path / "verified").exists()


def backup_directory(directory, files):
    """A backup directory as pg_basebackup writes one: `files` ({relative path: bytes}) and a backup_manifest
    with their SHA-256 checksums, covered by its own checksum on its last line."""
    entries = []
    for path, content in files.items():
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_bytes(content)
        entries.append(json.dumps({"Path": path, "Size": len(content), "Checksum-Algorithm": "SHA256",
                                   "Checksum": hashlib.sha256(content).hexdigest()}))
    body = ('{ "PostgreSQL-Backup-Manifest-Version": 2,\n"Files": [\n' + ",\n".join(entries) + "\n],\n").encode()
    (directory / "backup_manifest").write_bytes(
        body + f'"Manifest-Checksum": "{hashlib.sha256(body).hexdigest()}"}}\n'.encode())


def incremental_file(blocks, length, magic=base_backup.INCREMENTAL_MAGIC):
    return base_backup.struct.pack("=III", magic, len(blocks), length) + b"".join(
        base_backup.struct.pack("=I", b) for b in blocks)


def test_the_kept_files_an_incremental_rebuilds_are_those_it_has_blocks_of_or_resizes_the_rest_it_copies(tmp_path):
    block = bytes(base_backup.BLOCK_BYTES)
    backup_directory(tmp_path / "kept", {f"base/5/{n}": block * 2 for n in (16384, 16385, 16386, 16388)} |
                 {"PG_VERSION": b"17\n"})
    new = tmp_path / "new" / "base" / "5"
    new.mkdir(parents=True)
    (new / "INCREMENTAL.16384").write_bytes(incremental_file([], 2))  # unchanged: copied whole
    (new / "INCREMENTAL.16385").write_bytes(incremental_file([1], 2))  # a block changed
    (new / "INCREMENTAL.16386").write_bytes(incremental_file([], 1))  # truncated
    (new / "INCREMENTAL.16387").write_bytes(incremental_file([0], 1))  # new since: nothing of the kept copy's
    (new / "INCREMENTAL.16388").write_bytes(incremental_file([], 2, magic=1))  # unreadable: rebuilt, to be safe
    (tmp_path / "new" / "PG_VERSION").write_bytes(b"17\n")  # sent whole: never read from the kept copy
    assert base_backup.kept_reads(str(tmp_path / "new"), str(tmp_path / "kept")) == {
        "base/5/16384": False, "base/5/16385": True, "base/5/16386": True, "base/5/16388": True}


def test_kept_files_are_checked_against_the_manifest_which_is_checked_itself(tmp_path):
    backup_directory(tmp_path, {f"base/5/{n}": b"a" * 8192 for n in (16384, 16385, 16387)})
    rebuilt = {"base/5/16384": True, "base/5/16385": True}
    assert base_backup.kept_changes(str(tmp_path), rebuilt) == []
    (tmp_path / "base/5/16385").write_bytes(b"c" * 8192)
    (tmp_path / "base/5/16384").write_bytes(b"a" * 8193)
    (tmp_path / "base/5/16386").write_bytes(b"planted")
    (tmp_path / "base/5/16387").write_bytes(b"b" * 8192)  # copied whole: pg_verifybackup finds it afterwards
    assert base_backup.kept_changes(str(tmp_path), rebuilt | {"base/5/16386": False, "base/5/16387": False}) == [
        "base/5/16384 is not the size its manifest says", "base/5/16385 does not match its manifest's checksum",
        "base/5/16386 has no SHA-256 in its manifest"]
    assert base_backup.kept_changes(str(tmp_path), {}) == []  # nothing to read: the manifest alone
    manifest = tmp_path / "backup_manifest"
    manifest.write_bytes(manifest.read_bytes().replace(b'"Size": 8192', b'"Size": 8193', 1))
    assert base_backup.kept_changes(str(tmp_path), {}) == ["backup_manifest does not match its own checksum"]
    for unreadable in (b'{"Files": 1}\n\n', b"[]\n\n", b"\n"):
        manifest.write_bytes(unreadable)
        assert base_backup.kept_changes(str(tmp_path), {}) == ["backup_manifest is missing or unreadable"]
    manifest.unlink()
    assert base_backup.kept_changes(str(tmp_path), {}) == ["backup_manifest is missing or unreadable"]


def test_an_incremental_is_verified_onto_the_kept_copy_and_from_s3_when_that_fails(tmp_path, monkeypatch, capsys):
    s3, ids = chained_archive(2)
    backups = in_bucket(s3)
    trusted, _ = backups.vet(backups.versions())
    kept, copy = base_backup.KeptCopy(str(tmp_path)), str(tmp_path / "verified" / "data")
    new_data = tmp_path / "new"
    (new_data / "base" / "5").mkdir(parents=True)
    (new_data / "base" / "5" / "INCREMENTAL.16384").write_bytes(incremental_file([0], 1))
    new, assembled, failures = "20990101T000000Z", [], {}

    def assemble(links, work, here=None):
        assembled.append(([r["id"] for r in links], here))
        if failures.pop("assemble", None):
            raise base_backup.subprocess.CalledProcessError(1, "pg_combinebackup")
        return f"{work}/combined"

    backups.assemble = assemble
    for failing in (None, "changed", "assemble"):
        backup_directory(tmp_path / "combined", {"base/5/16384": b"a" * 8192})
        if failing == "changed":
            (tmp_path / "combined" / "base/5/16384").write_bytes(b"b" * 8192)
        kept.keep(ids[-1], str(tmp_path / "combined"))
        assembled.clear()
        failures[failing] = True
        found = backups.verified_chain(trusted, new, str(new_data), str(tmp_path / "chain"), kept)
        assert found == f"{tmp_path}/chain/combined"
        printed = capsys.readouterr().out
        # The kept copy's file this backup rebuilds is checked, then combined with the new backup alone.
        assert f"from the copy the last backup kept (1 of its files, those this backup rebuilds" in printed
        onto_copy = ([ids[-1], new], {ids[-1]: copy, new: str(new_data)})
        from_s3 = (ids + [new], {new: str(new_data)})
        if failing is None:
            assert assembled == [onto_copy] and (tmp_path / "verified").exists()
            continue
        # It failed a check: it goes, and every link comes from S3.
        assert assembled == ([from_s3] if failing == "changed" else [onto_copy, from_s3])
        assert not (tmp_path / "verified").exists()
        assert f"the kept copy of {ids[-1]} did not combine or verify (above): dropped" in printed
        if failing == "changed":
            assert "the kept copy's base/5/16384 does not match its manifest's checksum" in printed
    # No kept copy (or one of another backup): every link from S3 at once.
    assembled.clear()
    backups.verified_chain(trusted, new, str(new_data), str(tmp_path / "chain"), kept)
    assert assembled == [from_s3]
