"""The host-side WAL archiver's logic that needs no S3: names, timelines, clock skew, the hand-off to the uploader
over a real Unix socket. Its S3 behaviour is tested on the fleet (tests/e2e/test_wal_archive.py)."""

import socket
import struct
import threading
import time

import pytest

from hostside.wal_archive import (COMPRESSIONS, Archive, ArchiveError, clock_skew_problem, handoff, main,
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
