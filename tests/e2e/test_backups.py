"""Base backups and point-in-time restore on the fleet, checked from S3 with the fleet's admin keys and from
the restored cluster itself: a backup is verified, packed, uploaded with its checksum and recorded; it runs on
the primary only; a failed run is recorded where monitoring reads it; a restore to a noted time has what was
written before it and not what came after; a backup corrupted inside (outer checksums valid) is refused."""

import hashlib
import io
import json
import subprocess
import tarfile
import time

import pytest

from fleet.layout import Layout
from fleet.s3endpoint import client
from hostside import layout
from tests.e2e.test_deploy import PYINFRA, REPO
from tests.e2e.test_wal_archive import BUCKET, PREFIX, eventually, psql
from tests.fleet_helpers import fleet, on
from tests.metrics import scrape, value

PRIMARY, REPLICA, RESTORE_HOST = "pg-1", "pg-2", "pg-3"  # pg-1 leads (conftest.py)
UNIT = "mcp-base-backup.service"
FAILURE = f"/var/lib/mcp-portal/failures/{UNIT}.json"


@pytest.fixture(scope="module")
def s3():
    return client("s3", json.loads((Layout().local / "s3.json").read_text()))


def records(s3):
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX).get("Contents", [])
            if o["Key"].startswith(f"{PREFIX}/backups/") and o["Key"].endswith("/backup.json")]
    return sorted((json.load(s3.get_object(Bucket=BUCKET, Key=k)["Body"]) for k in keys), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def backup(s3):
    on(PRIMARY, f"systemctl start {UNIT}", timeout=600)
    return records(s3)[-1]


def restore(**data):
    data = [arg for name, value in {"restore_host": RESTORE_HOST, **data}.items() for arg in ("--data", f"{name}={value}")]
    return subprocess.run([PYINFRA, "-y", "inventory/local.py", "restore.py", *data], cwd=REPO, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture
def restored_cluster():
    yield lambda sql: on(RESTORE_HOST, f"runuser -u postgres -- psql -p 5433 -XtAc \"{sql}\"").stdout.strip()
    on(RESTORE_HOST, "pg_dropcluster --stop 17 restore", check=False)


def test_a_backup_is_verified_uploaded_with_its_checksum_and_recorded(s3, backup):
    assert backup["verified"] and backup["system_identifier"] == psql("select system_identifier from pg_control_system()")
    timeline = int(psql("select timeline_id from pg_control_checkpoint()"))
    assert backup["timeline"] == timeline and backup["start_lsn"] <= backup["end_lsn"]
    obj = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{backup['id']}/base.tar.gz")
    body = obj["Body"].read()
    assert hashlib.sha256(body).hexdigest() == backup["sha256"] == obj["Metadata"]["sha256"]
    assert obj["ServerSideEncryption"] == "aws:kms"
    names = tarfile.open(fileobj=io.BytesIO(body), mode="r:gz").getnames()
    assert "data/backup_manifest" in names and "data/PG_VERSION" in names
    journal = on(PRIMARY, f"journalctl -u {UNIT} --no-pager -o cat").stdout
    assert f"{backup['id']}: pg_verifybackup" in journal and f"{backup['id']}: done in" in journal


def test_the_timer_is_persistent_and_a_failure_is_recorded_until_the_next_success():
    assert on(PRIMARY, "systemctl show -P Persistent mcp-base-backup.timer").stdout.strip() == "yes"
    assert on(PRIMARY, "systemctl is-enabled mcp-base-backup.timer").stdout.strip() == "enabled"
    fleet("cut", "s3")
    try:
        assert on(PRIMARY, f"systemctl start {UNIT}", check=False, timeout=600).returncode != 0
        eventually(lambda: on(PRIMARY, f"test -f {FAILURE}", check=False).returncode == 0, what="the failure record")
        assert unit_failed(PRIMARY, UNIT) > time.time() - 600  # what monitoring scrapes
    finally:
        fleet("heal", "s3")
    on(PRIMARY, f"systemctl start {UNIT}", timeout=600)
    eventually(lambda: on(PRIMARY, f"test -f {FAILURE}", check=False).returncode == 1, what="the record's removal")
    assert unit_failed(PRIMARY, UNIT) is None


def unit_failed(host, unit):
    return value(scrape(host, "node"), "mcp_unit_failed_timestamp_seconds", unit=unit)


def test_on_a_replica_the_backup_does_nothing_and_says_why(s3, backup):
    on(REPLICA, f"systemctl start {UNIT}")
    journal = on(REPLICA, f"journalctl -u {UNIT} --no-pager -o cat").stdout
    assert "base backups run on the leader only; nothing to do" in journal
    assert records(s3)[-1]["id"] >= backup["id"]  # and nothing newer came from the replica
    assert all(r["system_identifier"] == backup["system_identifier"] for r in records(s3))


def test_point_in_time_restore_has_what_came_before_the_target_and_not_after(backup, restored_cluster):
    run = f"{time.time():.0f}"  # this run's rows: the table may hold earlier runs' too
    psql("create table if not exists pitr_probe (label text, at timestamptz default now())")
    psql(f"insert into pitr_probe (label) values ('A{run}')")
    target = psql("select now()")
    time.sleep(1.5)
    psql(f"insert into pitr_probe (label) values ('B{run}')")
    closed = psql("select pg_walfile_name(pg_switch_wal())")
    eventually(lambda: psql("select last_archived_wal from pg_stat_archiver") >= closed, what=f"{closed} archived")
    result = restore(restore_target_time=target)
    assert result.returncode == 0, result.stderr[-3000:]
    assert restored_cluster(f"select string_agg(label, ',') from pitr_probe where label like '_{run}'") == f"A{run}"
    assert restored_cluster("show archive_mode") == "off"
    assert restored_cluster("select pg_is_in_recovery()") == "f"


@pytest.fixture(scope="module")
def marked_targets(backup):
    """Row A, then a restore point, then row B, each archived: {kind: target} that falls between A and B."""
    run = f"{time.time():.0f}"
    psql("create table if not exists pitr_probe (label text, at timestamptz default now())")
    xid = psql(f"with a as (insert into pitr_probe (label) values ('A{run}') returning 1) select txid_current() from a")
    lsn = psql("select pg_current_wal_insert_lsn()")
    psql(f"select pg_create_restore_point('e2e-{run}')")
    psql(f"insert into pitr_probe (label) values ('B{run}')")
    closed = psql("select pg_walfile_name(pg_switch_wal())")
    eventually(lambda: psql("select last_archived_wal from pg_stat_archiver") >= closed, what=f"{closed} archived")
    return run, {"restore_target_xid": xid, "restore_target_lsn": lsn, "restore_target_name": f"e2e-{run}"}


@pytest.mark.parametrize("kind", ["restore_target_xid", "restore_target_lsn", "restore_target_name"])
def test_point_in_time_restore_to_a_transaction_an_lsn_or_a_restore_point(marked_targets, restored_cluster, kind):
    run, targets = marked_targets
    result = restore(**{kind: targets[kind]})
    assert result.returncode == 0, result.stderr[-3000:]
    assert restored_cluster(f"select string_agg(label, ',') from pitr_probe where label like '_{run}'") == f"A{run}"


def copy_prefix(source, dest):
    """Every object of the archive under `source`/ copied under `dest`/, metadata included (another environment's
    archive, as far as a restore can tell)."""
    admin = client("s3", json.loads((Layout().local / "s3.json").read_text()))
    # moto refuses the signature of a listing whose prefix holds a "/": list without it, filter here.
    pages = admin.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=source)
    keys = [o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].startswith(f"{source}/")]
    for key in keys:
        admin.copy_object(Bucket=BUCKET, Key=dest + key[len(source):], CopySource={"Bucket": BUCKET, "Key": key})
    return len(keys)


def test_a_restore_from_another_environments_archive_reads_only_that_archive(backup, restored_cluster):
    """A staging rebuild from prod, in miniature: "prod" is this archive copied under another prefix; rows
    archived here after the copy are not in "prod", so the restored cluster must not have them."""
    run, source = f"{time.time():.0f}", f"e2e-source-{time.time():.0f}"
    psql("create table if not exists pitr_probe (label text, at timestamptz default now())")
    psql(f"insert into pitr_probe (label) values ('A{run}')")
    closed = psql("select pg_walfile_name(pg_switch_wal())")
    eventually(lambda: psql("select last_archived_wal from pg_stat_archiver") >= closed, what=f"{closed} archived")
    assert copy_prefix(PREFIX, source) > 2
    psql(f"insert into pitr_probe (label) values ('B{run}')")
    closed = psql("select pg_walfile_name(pg_switch_wal())")
    eventually(lambda: psql("select last_archived_wal from pg_stat_archiver") >= closed, what=f"{closed} archived")
    result = restore(restore_source_prefix=source, restore_source_credentials=".fleet/s3/wal-archiver.json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert restored_cluster(f"select string_agg(label, ',') from pitr_probe where label like '_{run}'") == f"A{run}"
    assert "restore-source.json" in restored_cluster("show restore_command")
    assert restored_cluster("show archive_mode") == "off"


def forge_corrupted_backup(s3, backup):
    """A copy of `backup` with one byte flipped inside a data file, re-packed, with a record and outer checksum
    that match the new archive, as the newest backup: only pg_verifybackup's manifest check can catch it."""
    body = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{backup['id']}/base.tar.gz")["Body"].read()
    original = tarfile.open(fileobj=io.BytesIO(body), mode="r:gz")
    repacked, flipped = io.BytesIO(), None
    with tarfile.open(fileobj=repacked, mode="w:gz") as tar:
        for member in original.getmembers():
            content = original.extractfile(member).read() if member.isfile() else None
            if flipped is None and member.name.startswith("data/base/1/") and member.size > 8192:
                content, flipped = content[:100] + bytes([content[100] ^ 0xFF]) + content[101:], member.name
            tar.addfile(member, io.BytesIO(content) if content is not None else None)
    assert flipped
    forged_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() + 1))
    digest = hashlib.sha256(repacked.getvalue()).hexdigest()
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{forged_id}/base.tar.gz", Body=repacked.getvalue(),
                  Metadata={"sha256": digest})
    forged = dict(backup, id=forged_id, sha256=digest, finished_at=time.time())
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{forged_id}/backup.json", Body=json.dumps(forged).encode())
    return forged_id


def test_a_backup_corrupted_inside_is_refused_by_pg_verifybackup(s3, backup, restored_cluster):
    forged_id = forge_corrupted_backup(s3, backup)
    try:
        result = restore()
        assert result.returncode != 0
        assert "pg_verifybackup" in result.stderr and "checksum mismatch" in result.stderr
        assert on(RESTORE_HOST, "test -e /var/lib/postgresql/17/restore", check=False).returncode == 1
    finally:
        for name in ("base.tar.gz", "backup.json"):
            s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{forged_id}/{name}")


def versions(s3, key):
    listed = s3.list_object_versions(Bucket=BUCKET, Prefix=PREFIX)
    return [v for v in listed.get("Versions", []) + listed.get("DeleteMarkers", []) if v["Key"] == key]


def test_retention_keeps_a_restore_to_any_time_in_the_window_and_the_newest_backup(s3, backup, restored_cluster):
    on(PRIMARY, f"systemctl start {UNIT}", timeout=600)
    kept = records(s3)[-1]
    run = f"{time.time():.0f}"
    psql("create table if not exists retention_probe (label text, at timestamptz default now())")
    psql(f"insert into retention_probe (label) values ('inside{run}')")
    inside = float(psql("select extract(epoch from now())"))
    inside_text = psql("select now()")
    time.sleep(1.5)
    psql(f"insert into retention_probe (label) values ('later{run}')")
    on(PRIMARY, f"systemctl start {UNIT}", timeout=600)
    newest = records(s3)[-1]
    older = [r for r in records(s3) if r["id"] < kept["id"]]
    assert older, "the earlier tests' backups are there to delete"
    old_segment = f"{PREFIX}/wal/" + psql(f"select pg_walfile_name('{backup['start_lsn']}')")
    assert versions(s3, old_segment)
    opens = (kept["finished_at"] + inside) / 2  # the window opens after `kept` finished and before 'inside'
    window_days = (time.time() - opens) / 86400
    retention = f"{layout.program('base-backup')} retain --credentials /etc/mcp-portal/backup-retention.json"
    on(PRIMARY, f"{retention} --window-days {window_days:.10f}")
    left = records(s3)
    assert [r["id"] for r in left] == [kept["id"], newest["id"]]
    assert all(versions(s3, f"{PREFIX}/backups/{r['id']}/base.tar.gz") == [] for r in older)  # every version gone
    assert versions(s3, old_segment) == []
    assert restore(restore_target_time=inside_text).returncode == 0
    assert restored_cluster(f"select string_agg(label, ',') from retention_probe where label like '%{run}'") == f"inside{run}"
    on(PRIMARY, f"{retention} --window-days 0.000001")  # a window smaller than any backup's age
    assert [r["id"] for r in records(s3)] == [newest["id"]]


def test_the_archive_keys_cannot_run_retention():
    attempt = on(PRIMARY, f"runuser -u postgres -- {layout.program('base-backup')} retain --window-days 0.000001 "
                          "--credentials /etc/mcp-portal/wal-archiver.json", check=False)
    assert attempt.returncode != 0 and "AccessDenied" in attempt.stdout + attempt.stderr


DRILL_HOST, DRILL = PRIMARY, "mcp-restore-drill.service"  # the drill acts where the leader is


def run_drill():
    """Start the drill on its host, let the primary close the canary's segment, wait for the verdict."""
    on(DRILL_HOST, f"systemctl reset-failed {DRILL}; systemctl start --no-block {DRILL}")
    time.sleep(3)
    psql("select pg_switch_wal()")
    eventually(lambda: on(DRILL_HOST, f"systemctl is-active {DRILL}", check=False).stdout.strip() not in
               ("activating", "active"), timeout=600, what="the drill finished")
    result = json.loads(on(DRILL_HOST, "cat /var/lib/mcp-portal/drill/last.json").stdout)
    assert on(DRILL_HOST, "test -e /var/lib/postgresql/restore-drill", check=False).returncode == 1  # cleaned up
    return result, on(DRILL_HOST, f"systemctl show -P Result {DRILL}").stdout.strip()


def test_the_drill_restores_the_newest_backup_and_finds_the_canary(backup):
    # `backup` makes sure there is one; the drill restores whichever is newest.
    assert on(DRILL_HOST, "systemctl is-enabled mcp-restore-drill.timer").stdout.strip() == "enabled"
    result, outcome = run_drill()
    assert outcome == "success" and result["ok"], result
    assert result["checks"] == {"replay_reached_backup_end": True, "canary_present": True, "amcheck_clean": True}
    assert result["canary"]["writer"] in ("pgbouncer-1", "pgbouncer-2")  # the newest beat of either PgBouncer host
    metrics = scrape(DRILL_HOST, "node")
    assert value(metrics, "mcp_restore_drill_success") == 1
    assert value(metrics, "mcp_restore_drill_duration_seconds") == result["duration_s"]
    assert value(metrics, "mcp_restore_drill_last_success_timestamp_seconds") == result["started_at"] + result["duration_s"]


def test_on_a_replica_the_drill_does_nothing_and_says_why():
    assert on(REPLICA, "systemctl is-enabled mcp-restore-drill.timer").stdout.strip() == "enabled"  # it follows the leader
    on(REPLICA, f"systemctl start {DRILL}")
    log = on(REPLICA, f"journalctl -u {DRILL} -n 5 --no-pager -o cat").stdout
    assert "the restore drill run on the leader only; nothing to do" in log


def test_a_drill_on_a_backup_corrupted_inside_fails_loudly_and_is_recorded(s3):
    forged_id = forge_corrupted_backup(s3, records(s3)[-1])  # retention may have removed older ones
    try:
        result, outcome = run_drill()
        assert outcome != "success" and not result["ok"] and "pg_verifybackup" in result["error"]
        assert on(DRILL_HOST, f"test -f /var/lib/mcp-portal/failures/{DRILL}.json").returncode == 0
        assert value(scrape(DRILL_HOST, "node"), "mcp_restore_drill_success") == 0
        assert unit_failed(DRILL_HOST, DRILL) is not None
    finally:
        for name in ("base.tar.gz", "backup.json"):
            s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{forged_id}/{name}")
    result, outcome = run_drill()
    assert outcome == "success" and result["ok"]
    assert on(DRILL_HOST, f"test -f /var/lib/mcp-portal/failures/{DRILL}.json", check=False).returncode == 1


def test_a_restore_into_a_directory_holding_files_leaves_them_alone():
    on(RESTORE_HOST, "mkdir -p /var/lib/postgresql/17/restore && echo keep > /var/lib/postgresql/17/restore/operator-notes")
    try:
        result = restore()
        assert result.returncode != 0 and "exists and is not empty: move it away" in result.stdout + result.stderr
        assert on(RESTORE_HOST, "cat /var/lib/postgresql/17/restore/operator-notes").stdout.strip() == "keep"
    finally:
        on(RESTORE_HOST, "rm -rf /var/lib/postgresql/17/restore")


@pytest.mark.parametrize("targets, message", [
    ({"restore_host": "pgbouncer-1"}, "restore.py needs --data restore_host=HOST, one of the inventory's database hosts"),
    ({"restore_target_time": "2026-11-25 16:00:00+00", "restore_target_lsn": "0/3000000"},
     "restore_target_time: set one restore_target_* key, not restore_target_time, restore_target_lsn"),
    ({"restore_source_prefix": "prod", "restore_source_credentials": "/nonexistent.json"},
     "the restore source's S3 credentials file /nonexistent.json is missing"),
])
def test_a_restore_with_bad_input_is_refused_before_any_change(targets, message):
    result = restore(**targets)
    assert result.returncode != 0 and message in result.stderr
    assert on(RESTORE_HOST, "test -e /var/lib/postgresql/17/restore", check=False).returncode == 1
