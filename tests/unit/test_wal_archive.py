"""The host-side WAL archiver's logic that needs no S3: names, timelines, clock skew, the hand-off to the uploader
over a real Unix socket. Its S3 behaviour is tested on the fleet (tests/e2e/test_wal_archive.py)."""

import hashlib
import os
import socket
import subprocess
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
    (rule("COMPLIANCE", Days=32), None),
    (rule("COMPLIANCE", Years=1), None),
    (rule("COMPLIANCE", Days=7), "has a default COMPLIANCE lock of 7 days; it needs a default COMPLIANCE lock of at least"),
    (rule("GOVERNANCE", Days=32), "has a default GOVERNANCE lock of 32 days"),
    ({"ObjectLockEnabled": "Enabled"}, "has Object Lock without a default retention"),
    (None, "bucket b has no Object Lock; it needs"),
])
def test_the_archive_bucket_must_lock_every_version_for_the_recovery_window(lock, problem):
    found = lock_problem(LockConfiguration(lock), "b", 30, max_age_h=26)
    assert found is None if problem is None else problem in found and "(30 days, backup_retention_days)" in found


@pytest.mark.parametrize("days, full_every_days, refused", [(31, 0, True), (32, 0, False), (38, 7, True), (39, 7, False)])
def test_the_lock_also_covers_the_age_of_the_backup_a_restore_to_the_windows_start_needs(days, full_every_days, refused):
    """The window's first moment may need a backup up to backup_max_age_h older, and with incremental backups the
    full one their chain began with, up to backup_full_every_days older still."""
    found = lock_problem(LockConfiguration(rule("COMPLIANCE", Days=days)), "b", 30, 26, full_every_days)
    assert (found is not None) == refused
    assert not refused or found == (
        f"bucket b has a default COMPLIANCE lock of {days} days; it needs a default COMPLIANCE lock of at least "
        f"{30 + 26 / 24 + full_every_days:.1f} days: the recovery window (30 days, backup_retention_days) and the age of "
        f"the base backup a restore to its start may need ({26 / 24 + full_every_days:.1f} days: backup_max_age_h 26 + "
        f"backup_full_every_days {full_every_days}), so no key can delete what a restore needs (docs/backups.md)")


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


# -- restore_command's prefetch ------------------------------------------------------------------------------

SEGMENTS = [segment_name(1, i * SEGMENT_BYTES) for i in range(3, 23)]


class CountingArchive(MemoryArchive):
    """Counts reads; a name in `tampered` fails its checksum, as Archive.read says it."""

    def __init__(self, objects, tampered=(), delay_s=0.0):
        super().__init__(objects)
        self._s3 = object()  # no S3 client is made
        self.reads, self.tampered, self.delay_s = [], set(tampered), delay_s

    def read(self, name):
        self.reads.append(name)
        time.sleep(self.delay_s)
        if name in self.tampered:
            raise ArchiveError(f"{name} does not match its stored sha256: not restored")
        return super().read(name)


@pytest.fixture
def recovering(tmp_path):
    """A data directory in recovery, and the prefetchers started in it (threads, as `prefetch` processes)."""
    (tmp_path / "pg_wal").mkdir()
    (tmp_path / "recovery.signal").touch()
    started = []

    def prefetch(archive, depth=4, idle_s=60, recovery_pid=os.getpid()):
        thread = threading.Thread(
            target=lambda: wal_archive.Prefetch(tmp_path, depth).run(archive, recovery_pid, idle_s=idle_s), daemon=True)
        started.append(thread)
        return thread.start

    yield tmp_path, prefetch, started
    (tmp_path / "recovery.signal").unlink(missing_ok=True)
    for thread in started:
        thread.join(5)


def replay(datadir, archive, names, spawn, depth=4, replay_s=0.0):
    """restore_command for each name in turn, as PostgreSQL calls it (replaying each for `replay_s`); how each
    arrived, and their bytes."""
    how, contents = [], []
    dest = datadir / "pg_wal" / "RECOVERYXLOG"
    for name in names:
        if wal_archive.Prefetch(datadir, depth).serve(name, str(dest), spawn):
            how.append("spool")
        else:
            assert archive.fetch(name, str(dest))
            how.append("direct")
        contents.append(dest.read_bytes())
        dest.unlink()
        time.sleep(replay_s)
    return how, contents


def eventually(check, timeout=5):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


def test_the_prefetch_window_is_the_segments_after_the_wanted_one_on_its_timeline():
    assert wal_archive.prefetch_window("0000000200000000000000FE", 3) == [
        "0000000200000000000000FF", "000000020000000100000000", "000000020000000100000001"]


def test_after_the_first_segment_every_one_comes_from_the_spool_each_read_once_with_its_bytes(recovering):
    datadir, prefetch, _ = recovering
    objects = {n: n.encode() * 1000 for n in SEGMENTS}
    archive = CountingArchive(objects, delay_s=0.01)
    how, contents = replay(datadir, archive, SEGMENTS, prefetch(archive), replay_s=0.05)
    assert how == ["direct"] + ["spool"] * (len(SEGMENTS) - 1)
    assert contents == [objects[n] for n in SEGMENTS]
    served = [n for n in archive.reads if n in objects]  # (a name past the archive's end is asked again later)
    assert sorted(served) == SEGMENTS  # each read once


def test_the_spool_holds_at_most_depth_segments_after_the_wanted_one(recovering):
    datadir, prefetch, _ = recovering
    archive = CountingArchive({n: b"x" for n in SEGMENTS})
    replay(datadir, archive, SEGMENTS[:1], prefetch(archive, depth=3), depth=3)
    spool = datadir / "pg_wal" / wal_archive.PREFETCH_DIR
    eventually(lambda: {p.name for p in spool.iterdir() if SEGMENT.match(p.name)} == set(SEGMENTS[1:4]))
    time.sleep(0.2)
    assert {p.name for p in spool.iterdir() if SEGMENT.match(p.name)} == set(SEGMENTS[1:4])


def test_a_tampered_or_absent_segment_never_reaches_the_spool_and_restore_command_refuses_it_itself(recovering):
    datadir, prefetch, _ = recovering
    archive = CountingArchive({n: b"x" for n in SEGMENTS[:5]}, tampered={SEGMENTS[2]})
    spawn = prefetch(archive)
    replay(datadir, archive, SEGMENTS[:2], spawn)
    assert not wal_archive.Prefetch(datadir, 4).serve(SEGMENTS[2], str(datadir / "pg_wal" / "RECOVERYXLOG"), spawn)
    with pytest.raises(ArchiveError, match="does not match its stored sha256"):
        archive.fetch(SEGMENTS[2], str(datadir / "pg_wal" / "RECOVERYXLOG"))
    how, _ = replay(datadir, archive, SEGMENTS[3:5], spawn)
    assert how[1] == "spool"
    assert not wal_archive.Prefetch(datadir, 4).serve(SEGMENTS[5], str(datadir / "pg_wal" / "RECOVERYXLOG"), spawn)


def test_the_spool_is_gone_when_recovery_ends_and_when_nothing_is_asked(recovering):
    datadir, prefetch, started = recovering
    archive = CountingArchive({n: b"x" for n in SEGMENTS})
    spool = datadir / "pg_wal" / wal_archive.PREFETCH_DIR
    replay(datadir, archive, SEGMENTS[:2], prefetch(archive))
    (datadir / "recovery.signal").unlink()  # promoted
    started[0].join(5)
    assert not spool.exists()
    (datadir / "recovery.signal").touch()
    replay(datadir, archive, SEGMENTS[2:3], prefetch(archive, idle_s=0.3))
    started[1].join(5)
    assert not started[1].is_alive() and not spool.exists()


def test_a_spool_without_its_prefetcher_is_never_served(recovering):
    """Left by a killed prefetcher (maybe of another archive): only a live prefetcher's segments are served, and
    the next one empties the spool before it starts."""
    datadir, prefetch, _ = recovering
    spool = datadir / "pg_wal" / wal_archive.PREFETCH_DIR
    spool.mkdir()
    (spool / "lock").touch()
    (spool / SEGMENTS[1]).write_bytes(b"stale")
    spawned = []
    assert not wal_archive.Prefetch(datadir, 4).serve(SEGMENTS[1], str(datadir / "pg_wal" / "RECOVERYXLOG"),
                                                      lambda: spawned.append(1))
    assert spawned == [1] and not (datadir / "pg_wal" / "RECOVERYXLOG").exists()
    archive = CountingArchive({n: n.encode() for n in SEGMENTS})
    how, contents = replay(datadir, archive, SEGMENTS[1:4], prefetch(archive))
    assert contents == [n.encode() for n in SEGMENTS[1:4]]


def test_the_prefetcher_leaves_at_once_when_the_recovery_process_exits(recovering):
    """A start that fails (recovery aborted) must not leave a prefetcher in the cluster's service: systemd would
    wait for it before it calls the start failed."""
    datadir, prefetch, started = recovering
    startup = subprocess.Popen(["sleep", "60"])
    archive = CountingArchive({n: b"x" for n in SEGMENTS})
    replay(datadir, archive, SEGMENTS[:1], prefetch(archive, recovery_pid=startup.pid))
    eventually(lambda: (datadir / "pg_wal" / wal_archive.PREFETCH_DIR / SEGMENTS[1]).exists())
    startup.kill()
    startup.wait()
    killed = time.monotonic()
    started[0].join(5)
    assert time.monotonic() - killed < 0.5 and not started[0].is_alive()
    assert list((datadir / "pg_wal").iterdir()) == []  # recovery.signal is still there: only the exit ended it


def test_the_recovery_process_is_the_nearest_ancestor_named_postgres(tmp_path, monkeypatch):
    """restore_command <- sh <- postgres (the startup process); `(sh)` with a space in a name parses too."""
    monkeypatch.delenv("MCP_WAL_PREFETCH_WATCH_PID", raising=False)
    monkeypatch.setattr(os, "getppid", lambda: 30)
    for pid, name, parent in ((30, "sh", 20), (20, "postgres", 10), (10, "postgres", 1)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) S {parent} 1 1 0 -1\n")
    assert wal_archive.recovery_process(str(tmp_path)) == 20
    (tmp_path / "20" / "stat").write_text("20 (my prog) S 1 1 1 0 -1\n")
    assert wal_archive.recovery_process(str(tmp_path)) is None


def test_a_prefetcher_that_cannot_start_leaves_restore_command_to_fetch_as_before(recovering, monkeypatch, capsys):
    datadir, _, _ = recovering
    monkeypatch.chdir(datadir)
    monkeypatch.setenv("MCP_WAL_PREFETCH_WATCH_PID", str(os.getpid()))
    assert not wal_archive.served_ahead({"prefetch": 4}, SEGMENTS[0], "pg_wal/RECOVERYXLOG", program="/nonexistent/mcp")
    assert "prefetching failed (" in capsys.readouterr().err
    assert not wal_archive.served_ahead({"prefetch": 0}, SEGMENTS[0], "pg_wal/RECOVERYXLOG", program="/nonexistent/mcp")
