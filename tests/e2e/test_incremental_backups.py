"""Incremental base backups on the fleet (issue 21): on a recent full backup, pg_basebackup --incremental, verified
as a restore would use it (pg_combinebackup onto the verified copy of the chain the last run kept, else onto its
links from S3; pg_verifybackup); the restore drill restores the chain; a kept copy changed on disk, in a file the
backup rebuilds or in one it copies whole, is dropped; a broken link is refused by name and never built on. The
fleet's timer takes full backups (backup_full_every_days = 0 in group_data/local.py, so the other tiers' backups
stand alone): these tests run the program as the timer's unit does, with the knob's default, --full-every-days 7."""

import json

import pytest

from hostside import layout
from hostside.base_backup import started_at
from tests.e2e.test_backups import RESTORE_HOST, UNIT, forget, records, restore, run_drill
from tests.e2e.test_wal_archive import BUCKET, PREFIX, eventually, psql, s3, switch  # noqa: F401 (s3: a fixture)
from tests.fleet_helpers import on
from tests.metrics import scrape, value

PRIMARY = "pg-1"  # leads (conftest.py)
KEPT = "/var/lib/postgresql/backup-work/verified"  # the verified copy of the chain the last run kept
TAKE = (f"runuser -u postgres -- {layout.program('base-backup')} run --work-dir /var/lib/postgresql/backup-work "
        "--full-every-days 7")


def take_incremental():
    """One run as the unit's, with --full-every-days 7: what it printed."""
    return on(PRIMARY, TAKE, timeout=600).stdout


def change_some_rows(label):
    psql(f"insert into incremental_probe select '{label}', repeat(md5(g::text), 20) from generate_series(1, 2000) g")


@pytest.fixture(scope="module")
def chain(s3):
    """[full, incremental, incremental]: a full backup by the fleet's timer unit, then two incremental ones. Beside
    incremental_probe, which each adds rows to, kept_probe stays as the full backup has it (frozen first).
    Neither is vacuumed by autovacuum: with data checksums, a vacuum's hint bits log all of a table's pages again,
    and pg_basebackup sends a file more than 90% changed whole, neither rebuilt onto the kept copy nor copied from it."""
    psql("drop table if exists kept_probe, incremental_probe")
    psql("create table incremental_probe (label text, filler text) with (autovacuum_enabled = off)")
    psql("create table kept_probe with (autovacuum_enabled = off) as "
         "select g, repeat(md5(g::text), 20) as filler from generate_series(1, 2000) g")
    psql("vacuum (freeze) kept_probe")
    on(PRIMARY, f"systemctl start {UNIT}", timeout=600)
    full = records(s3)[-1]
    taken = [full]
    for n in (1, 2):
        change_some_rows(f"incremental {n}")
        printed = take_incremental()
        taken.append(records(s3)[-1])
        taken[-1]["printed"] = printed
    return taken


def test_a_backup_on_a_recent_full_one_is_incremental_smaller_and_verified_as_its_chain(chain):
    full, first, second = chain
    assert full["chain"] == [full["id"]]
    assert first["chain"] == [full["id"], first["id"]] and second["chain"] == [full["id"], first["id"], second["id"]]
    assert f"pg_basebackup --incremental on {full['id']}" in first["printed"]
    assert f"pg_basebackup --incremental on {first['id']}" in second["printed"]
    # Verified as a restore would combine it. The first: every earlier link from S3 (the timer's full backup,
    # taken with --full-every-days 0, kept no copy), then the combined copy checked.
    assert f"pg_combinebackup of 2 backups ({full['id']} .. {first['id']})" in first["printed"]
    assert "from the copy the last backup kept" not in first["printed"]
    # The second: onto the combined copy the first kept (the files it rebuilds checked first), nothing downloaded.
    assert f"its chain up to {first['id']} from the copy the last backup kept (" in second["printed"]
    assert f"pg_combinebackup of 2 backups ({first['id']} .. {second['id']})" in second["printed"]
    for printed in (first["printed"], second["printed"]):
        assert "pg_verifybackup on the combined chain" in printed
    assert on(PRIMARY, f"cat {KEPT}/backup_id").stdout == second["id"]
    assert on(PRIMARY, f"stat -c '%U %a' {KEPT} {KEPT}/data").stdout.split("\n")[:2] == ["postgres 700"] * 2
    assert second["size_bytes"] < full["size_bytes"], (second["size_bytes"], full["size_bytes"])
    metrics = scrape(PRIMARY, "node")
    assert value(metrics, "mcp_base_backup_chain_length") == 3
    assert value(metrics, "mcp_base_backup_last_full_timestamp_seconds") == started_at(full["id"])


def test_the_drill_restores_an_incremental_backup_by_combining_its_chain(chain):
    result, outcome = run_drill()
    assert outcome == "success" and result["ok"], result
    assert result["backup"] == chain[-1]["id"]
    assert result["checks"] == {"replay_reached_backup_end": True, "canary_present": True, "amcheck_clean": True}


@pytest.mark.parametrize("table", ["incremental_probe", "kept_probe"],
                         ids=["in-a-file-the-backup-rebuilds", "in-a-file-it-copies-whole"])
def test_a_kept_copy_changed_on_disk_is_dropped_and_the_chain_comes_from_s3(s3, chain, table):
    """incremental_probe gets rows, so the backup rebuilds its file: the kept file is checked against the kept
    manifest first. kept_probe does not change, so its file is copied whole with its manifest checksum: pg_verifybackup
    of the combined copy finds it."""
    kept = chain[-1]
    path = psql(f"select pg_relation_filepath('{table}')")
    on(PRIMARY, f"runuser -u postgres -- dd if=/dev/urandom of={KEPT}/data/{path} bs=8 seek=500 count=1 "
                "conv=notrunc status=none")  # 8 bytes inside its first block: the file's size unchanged
    change_some_rows("after the kept copy changed")
    printed = take_incremental()
    made = records(s3)[-1]
    chain.append(made)  # forgotten with the others at the end
    if table == "incremental_probe":
        assert f"the kept copy's {path} does not match its manifest's checksum" in printed
        assert f"pg_combinebackup of 2 backups ({kept['id']} .. {made['id']})" not in printed
    else:
        assert f"pg_combinebackup of 2 backups ({kept['id']} .. {made['id']})" in printed
    assert f"the kept copy of {kept['id']} did not combine or verify (above): dropped" in printed
    assert f"pg_combinebackup of {len(chain)} backups ({chain[0]['id']} .. {made['id']})" in printed
    assert made["chain"] == [record["id"] for record in chain]
    assert on(PRIMARY, f"cat {KEPT}/backup_id").stdout == made["id"]


def test_a_broken_link_is_refused_by_name_never_built_on_and_the_restore_uses_a_whole_chain(s3, chain):
    full, first, second = chain[:3]
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{first['id']}/base.tar.gz", Body=b"altered")
    made = None
    try:
        listed = on(PRIMARY, f"runuser -u postgres -- {layout.program('base-backup')} list")
        assert f"backup {first['id']} is not listed: base.tar.gz has 2 versions" in listed.stderr
        assert (f"backup {second['id']} is not listed: backup {first['id']}, a link of its chain, is missing or "
                "refused: a broken chain, not restorable") in listed.stderr
        assert [json.loads(line)["id"] for line in listed.stdout.splitlines()][-1] == full["id"]
        # The next backup builds on the newest whole chain: the full one.
        printed = take_incremental()
        assert f"pg_basebackup --incremental on {full['id']}" in printed
        made = records(s3)[-1]
        assert made["chain"] == [full["id"], made["id"]]
        # The kept copy was of a backup on the broken link: not used, and replaced by this chain's.
        assert "from the copy the last backup kept" not in printed
        assert on(PRIMARY, f"cat {KEPT}/backup_id").stdout == made["id"]
        # A restore to the archive's end starts from that chain and replays the rest: the rows of both links.
        closed = switch()  # after a write: right after a backup, pg_switch_wal() alone may leave the segment open
        eventually(lambda: psql("select last_archived_wal from pg_stat_archiver") >= closed, what=f"{closed} archived")
        result = restore()
        assert result.returncode == 0, result.stderr[-3000:]
        restored = on(RESTORE_HOST, "runuser -u postgres -- psql -p 5433 -XtAc \"select count(*) from "
                                    "incremental_probe where label like 'incremental _'\"").stdout.strip()
        assert restored == psql("select count(*) from incremental_probe where label like 'incremental _'") != "0"
    finally:
        on(RESTORE_HOST, "pg_dropcluster --stop 17 restore", check=False)
        for record in chain[1:]:  # hidden as an operator would: the versions stay locked
            forget(s3, record["id"])
