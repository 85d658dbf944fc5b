"""The host-side WAL archiver's logic that needs no S3: names, timelines, clock skew, the hand-off to the uploader
over a real Unix socket. Its S3 behaviour is tested on the fleet (tests/e2e/test_wal_archive.py)."""

import hashlib
import socket
import struct
import threading
import time

import pytest

import botocore.exceptions

from hostside import wal_archive
from hostside.wal_archive import (COMPRESSIONS, SEGMENT, Archive, ArchiveError, clock_skew_problem, format_lsn,
                                  handoff, lock_problem, lsn, main, segment_end, segment_name, segment_range,
                                  timeline_of)

CONFIG = {"bucket": "b", "prefix": "/local/", "socket": "/nonexistent"}


@pytest.mark.parametrize("name, key", [
    ("000000010000000000000003", "local/wal/000000010000000000000003"),
    ("000000010000000000000003.partial", "local/wal/000000010000000000000003.partial"),
    ("000000010000000000000003.00000028.backup", "local/wal/000000010000000000000003.00000028.backup"),
    ("00000002.history", "local/history/00000002.history"),
])
def test_keys_keep_history_files_apart_so_listing_them_is_cheap(name, key):
    assert Archive(CONFIG).key(name) == key


def test_timeline_is_the_first_eight_hex_digits():
    assert timeline_of("0000000A0000000000000003") == 10 and timeline_of("00000002.history") == 2


@pytest.mark.parametrize("name", ["pg_control", "../000000010000000000000003", "00000001000000000000000G", "x.history"])
def test_anything_but_wal_names_is_refused_before_s3(tmp_path, name):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ArchiveError, match="is not a WAL segment"):
        Archive(CONFIG).push(str(tmp_path / "f"), name)


def test_compressions_round_trip():
    segment = b"\x00" * 1000 + b"wal" * 100
    for compress, decompress in COMPRESSIONS.values():
        assert decompress(compress(segment)) == segment


def test_system_identifier_is_read_from_pg_control(tmp_path):
    (tmp_path / "global").mkdir()
    (tmp_path / "global" / "pg_control").write_bytes(struct.pack("<Q", 7441020202020202020) + b"\x00" * 100)
    assert Archive({**CONFIG, "data_directory": str(tmp_path)}).system_identifier() == "7441020202020202020"


@pytest.mark.parametrize("offset, problem", [(0, None), (299, None), (-299, None), (301, "301 s ahead of"),
                                             (-1000, "1000 s behind")])
def test_clock_skew_against_the_endpoints_date_header(offset, problem):
    date = "Wed, 25 Nov 2026 16:00:00 GMT"
    endpoint = 1795622400.0  # that Date as epoch seconds
    found = clock_skew_problem(date, endpoint + offset)
    assert found is None if problem is None else problem in found and "fix NTP" in found


class LockConfiguration:
    """A bucket's answer to GetObjectLockConfiguration: `lock` (None: the bucket has no Object Lock)."""

    def __init__(self, lock):
        self.lock = lock

    def get_object_lock_configuration(self, Bucket):
        if self.lock is None:
            raise botocore.exceptions.ClientError({"Error": {"Code": "ObjectLockConfigurationNotFoundError"}}, "Get")
        return {"ObjectLockConfiguration": self.lock}


def rule(mode, **period):
    return {"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": mode, **period}}}


@pytest.mark.parametrize("lock, problem", [
    (rule("COMPLIANCE", Days=30), None),
    (rule("COMPLIANCE", Years=1), None),
    (rule("COMPLIANCE", Days=7), "has a default COMPLIANCE lock of 7 days; it needs a default COMPLIANCE lock of at least"),
    (rule("GOVERNANCE", Days=30), "has a default GOVERNANCE lock of 30 days"),
    ({"ObjectLockEnabled": "Enabled"}, "has Object Lock without a default retention"),
    (None, "bucket b has no Object Lock; it needs"),
])
def test_the_archive_bucket_must_lock_every_version_for_the_recovery_window(lock, problem):
    found = lock_problem(LockConfiguration(lock), "b", 30)
    assert found is None if problem is None else problem in found and "(30 days, backup_retention_days)" in found


def uploader(tmp_path, reply):
    """A real Unix socket server that reads one request and answers `reply` (None: closes without a verdict)."""
    path = str(tmp_path / "socket")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)

    def serve():
        connection, _ = server.accept()
        with connection:
            connection.recv(4096)
            if reply is not None:
                connection.sendall(reply)
        server.close()
    threading.Thread(target=serve, daemon=True).start()
    return path


def test_handoff_reports_the_uploaders_verdict(tmp_path):
    assert handoff(uploader(tmp_path, b"ok archived\n"), "p", "n") == (True, "archived")


def test_handoff_fails_when_the_uploader_dies_before_its_verdict(tmp_path):
    ok, message = handoff(uploader(tmp_path, None), "p", "n")
    assert not ok and "closed the connection before confirming" in message


def test_handoff_is_none_without_an_uploader(tmp_path):
    assert handoff(str(tmp_path / "nobody"), "p", "n") is None


def push_with_verdict(tmp_path, monkeypatch, reply):
    config = tmp_path / "wal-archive.json"
    config.write_text('{"bucket": "b", "prefix": "p", "socket": "%s"}' % uploader(tmp_path, reply))
    monkeypatch.setenv("MCP_WAL_ARCHIVE_CONFIG", str(config))
    monkeypatch.setenv("MCP_METRICS_DIR", str(tmp_path))
    return main(["wal_archive.py", "push", "pg_wal/000000010000000000000003", "000000010000000000000003"])


def test_push_exits_non_zero_with_one_line_when_the_uploader_refuses(tmp_path, monkeypatch, capsys):
    assert push_with_verdict(tmp_path, monkeypatch, b"error SPLIT BRAIN? x\n") == 1
    assert capsys.readouterr().err == "wal_archive push: SPLIT BRAIN? x\n"
    assert "mcp_wal_archive_last_failure_timestamp_seconds 1" in (tmp_path / "wal_archive_failure.prom").read_text()
    assert not (tmp_path / "wal_archive_success.prom").exists()


def test_a_successful_push_records_its_time(tmp_path, monkeypatch):
    before = time.time()
    assert push_with_verdict(tmp_path, monkeypatch, b"ok archived\n") == 0
    metric = (tmp_path / "wal_archive_success.prom").read_text().splitlines()[-1]
    assert metric.startswith("mcp_wal_archive_last_success_timestamp_seconds ")
    assert before <= float(metric.split()[1]) <= time.time()


def test_usage_errors_exit_2(capsys):
    assert main(["wal_archive.py", "push", "only-one-argument"]) == 2
    assert "archive_command" in capsys.readouterr().err


SEGMENT_BYTES = 16 * 2**20


def test_segment_arithmetic_crosses_the_log_id_boundary():
    assert segment_name(1, 3 * SEGMENT_BYTES + 5) == "000000010000000000000003"
    assert segment_end("000000010000000000000003") == 4 * SEGMENT_BYTES
    assert segment_range("0000000200000000000000FE", "000000020000000100000001") == [
        "0000000200000000000000FE", "0000000200000000000000FF", "000000020000000100000000", "000000020000000100000001"]
    assert lsn("1/2") == 2**32 + 2 and format_lsn(lsn("16/B374D848")) == "16/B374D848"


class MemoryArchive(Archive):
    """The archive's bookkeeping over a dict instead of S3 (the S3 calls are exercised on the fleet)."""

    def __init__(self, objects, data_directory="/nonexistent"):
        super().__init__(dict(CONFIG, data_directory=data_directory))
        self.objects = objects

    def check_owner(self):
        pass

    def read(self, name):
        return self.objects.get(name)

    def _put_if_absent(self, key, body, metadata):
        name = key.rsplit("/", 1)[1]
        if name in self.objects:
            return False
        self.objects[name] = COMPRESSIONS[metadata["compression"]][1](body)
        return True

    def _head(self, key):
        name = key.rsplit("/", 1)[1]
        return {"Metadata": {"sha256": hashlib.sha256(self.objects[name]).hexdigest()}} if name in self.objects else None

    def segments(self, timeline):
        return sorted(n for n in self.objects if SEGMENT.match(n) and timeline_of(n) == timeline)


# Timeline 2 branched from timeline 1 inside segment 6 (0/6000100).
HISTORY_2 = b"1\t0/6000100\tno recovery target specified\n"


def wal_file(tmp_path, name, content=b"wal"):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def test_a_replaced_timeline_may_archive_what_both_share_and_nothing_past_the_switch(tmp_path):
    (tmp_path / "pg_wal").mkdir()
    archive = MemoryArchive({"00000002.history": HISTORY_2}, str(tmp_path))
    assert archive.switchpoint(1) == 0x6000100 and archive.switchpoint(2) is None
    shared = "000000010000000000000005"
    assert archive.push(wal_file(tmp_path, shared), shared) == "archived"
    for name in ("000000010000000000000006", "000000010000000000000007"):  # holds the switch; after it
        with pytest.raises(ArchiveError, match="must not archive"):
            archive.push(wal_file(tmp_path, name), name)
    partial = "000000010000000000000006.partial"  # the promotion's own copy of the switch segment
    assert archive.push(wal_file(tmp_path, partial), partial) == "archived"


def test_a_server_on_a_later_timeline_drops_a_leftover_segment_of_a_replaced_one(tmp_path):
    """Left by a rejoin, a .ready file of the old timeline would block PostgreSQL's archiver for good."""
    (tmp_path / "pg_wal").mkdir()
    (tmp_path / "pg_wal" / "00000003.history").write_text("")
    archive = MemoryArchive({"00000002.history": HISTORY_2}, str(tmp_path))
    name = "000000010000000000000007"
    assert archive.push(wal_file(tmp_path, name), name).startswith("not archived: timeline 1 ended at 0/6000100")
    assert name not in archive.objects


def test_seal_archives_the_parent_timelines_gap_from_pg_wal_and_names_what_is_gone(tmp_path):
    objects = {"00000002.history": HISTORY_2, "000000010000000000000002": b"2", "000000010000000000000003": b"3"}
    wal_file(tmp_path, "000000010000000000000004")
    parent, last, backfilled, missing = MemoryArchive(objects).seal(2, str(tmp_path))
    assert (parent, last) == (1, "000000010000000000000006")
    assert backfilled == ["000000010000000000000004"] and missing == ["000000010000000000000005"]
    assert objects["000000010000000000000004"] == b"wal"


def test_seal_waits_for_the_promotions_history():
    with pytest.raises(ArchiveError, match="history is not archived yet"):
        MemoryArchive({}).seal(2, "/nonexistent")


class Flaky(Archive):
    """fetch() answers from `script`: an exception is raised, anything else returned."""

    def __init__(self, script):
        super().__init__(CONFIG)
        self.script = list(script)

    def fetch(self, name, dest):
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_failed_fetch_is_tried_again_after_each_pause_until_it_succeeds():
    slept = []
    archive = Flaky([ConnectionError("cut"), TimeoutError("slow"), True])
    assert archive.fetch_patiently("000000010000000000000003", "/nonexistent", (1, 2, 4), slept.append) is True
    assert slept == [1, 2]


def test_a_segment_that_does_not_match_its_checksum_is_refused_at_once():
    with pytest.raises(ArchiveError, match="tampered"):
        Flaky([ArchiveError("tampered"), True]).fetch_patiently("000000010000000000000003", "/nonexistent", (1,),
                                                                 lambda _: pytest.fail("tried again"))


def test_a_missing_segment_is_an_answer_not_a_failure():
    slept = []
    assert Flaky([False]).fetch_patiently("000000010000000000000003", "/nonexistent", (1, 2), slept.append) is False
    assert slept == []


def test_the_last_failure_is_raised_once_the_pauses_are_spent():
    with pytest.raises(ConnectionError, match="still cut"):
        Flaky([ConnectionError("cut"), ConnectionError("still cut")]).fetch_patiently(
            "000000010000000000000003", "/nonexistent", (1,), lambda _: None)


def test_a_restore_aborts_recovery_and_a_standby_goes_on_streaming_and_is_counted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MCP_METRICS_DIR", str(tmp_path))
    (tmp_path / "recovery.signal").write_text("")
    assert wal_archive.recovery_kind(str(tmp_path)) == "restore"
    assert wal_archive.fetch_failed("000000010000000000000003", ArchiveError("no match"), "restore") == 255 > 125
    assert "RECOVERY ABORTED" in capsys.readouterr().err and not (tmp_path / "wal_restore.prom").exists()
    (tmp_path / "standby.signal").write_text("")
    assert wal_archive.recovery_kind(str(tmp_path)) == "standby"
    assert wal_archive.fetch_failed("000000010000000000000003", ConnectionError("cut"), "standby") == 1
    assert "this standby goes on streaming from the primary" in capsys.readouterr().err
    assert "mcp_wal_restore_last_failure_timestamp_seconds " in (tmp_path / "wal_restore.prom").read_text()
