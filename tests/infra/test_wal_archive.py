"""WAL archiving on the database hosts: on, through the resident uploader, its keys private, and working now:
a segment closed by this check reaches the archive (the leader marks it .done only once the archive has it)."""

import json
import time

from hostside import layout
from tests.infra.test_postgres import psql

UNIT = "mcp-wal-archive"


def test_archiving_is_on_with_the_deploys_archiver(db_target):
    host = db_target.host
    assert psql(host, "show archive_mode") == "on"
    assert psql(host, "show archive_command").startswith(f"{layout.program('wal-archive')} push ")
    if psql(host, "select pg_is_in_recovery()") == "t":  # Patroni writes the recovery settings for a replica only
        assert psql(host, "show restore_command").startswith(f"{layout.program('wal-archive')} fetch ")
    assert host.service(f"{UNIT}.service").is_running and host.service(f"{UNIT}.service").is_enabled


def test_archive_keys_are_private_to_postgres_and_every_member_may_claim_the_prefix(db_target):
    keys = db_target.host.file("/etc/mcp-portal/wal-archiver.json")
    assert (keys.user, keys.group, keys.mode) == ("postgres", "postgres", 0o600)
    config = json.loads(db_target.host.file("/etc/mcp-portal/wal-archive.json").content_string)
    assert config["claim_prefix"] is True  # whichever member leads archives
    assert "secret_access_key" not in json.dumps(config)


def archived(wal, segment):
    """A shell test: `segment` is archived (its .done is there), or already recycled, which only follows archiving."""
    return f"test -e {wal}/archive_status/{segment}.done || test ! -e {wal}/{segment}"


def test_a_segment_closed_now_is_archived(primary_target):
    host = primary_target.host
    # The segment the switch closed. pg_stat_archiver's last_archived_wal cannot tell: after a promotion the old
    # timeline's .partial may be archived after this segment and sorts before it.
    closed = psql(host, "select pg_walfile_name(pg_switch_wal())")
    wal = f"{psql(host, 'show data_directory')}/pg_wal"
    deadline = time.monotonic() + 60
    while not host.run(archived(wal, closed)).succeeded:
        assert time.monotonic() < deadline, f"{closed} not archived within 60 s: see pg_stat_archiver and the log"
        time.sleep(1)
