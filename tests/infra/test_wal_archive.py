"""WAL archiving on the database hosts: on, through the resident uploader, its keys private, and working now:
a segment closed by this check reaches the archive (the primary's own pg_stat_archiver says so)."""

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


def test_a_segment_closed_now_is_archived(primary_target):
    host = primary_target.host
    psql(host, "select pg_switch_wal()")  # closes the current segment, if it holds anything
    closed = psql(host, "select pg_walfile_name(pg_current_wal_lsn() - 1)")
    deadline = time.monotonic() + 60
    while psql(host, "select coalesce(last_archived_wal, '') from pg_stat_archiver") < closed:
        assert time.monotonic() < deadline, f"{closed} not archived within 60 s: see pg_stat_archiver and the log"
        time.sleep(1)
