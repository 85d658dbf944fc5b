"""Base backups and point-in-time restore on the fleet, checked from S3 with the fleet's admin keys and from
the restored cluster itself: a backup is verified, packed, uploaded with its checksum and recorded; it runs on
the primary only; a failed run is recorded where monitoring reads it; a restore to a noted time has what was
written before it and not what came after; a backup corrupted inside (outer checksums valid) is refused."""

import datetime
import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
import time

import botocore.exceptions
import pytest

from fleet.layout import Layout
from fleet.s3endpoint import client
from hostside import layout
from hostside.base_backup import lsn_value as lsn_of
from tests.e2e.test_deploy import REPO, pyinfra_argv
from tests.e2e.test_wal_archive import BUCKET, PREFIX, eventually, psql, switch
from tests.fleet_helpers import fleet, host_clock, logged, on
from tests.metrics import scrape, value

PRIMARY, REPLICA, RESTORE_HOST = "pg-1", "pg-2", "pg-3"  # pg-1 leads (conftest.py)
UNIT = "mcp-base-backup.service"
RETENTION = f"{layout.program('base-backup')} retain --credentials /etc/mcp-portal/backup-retention.json"
FAILURE = f"/var/lib/mcp-portal/failures/{UNIT}.json"
RESTORE_LOG = "/var/log/postgresql/postgresql-17-restore.log"


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
    return subprocess.run(pyinfra_argv("-y", "inventory/local.py", "restore.py", *data), cwd=REPO, capture_output=True,
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
    manifest = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{backup['id']}/backup_manifest")["Body"].read()
    assert hashlib.sha256(manifest).hexdigest() == backup["manifest_sha256"]
    # The bucket's default lock holds every version for the recovery window: no key can delete or shorten it.
    assert obj["ObjectLockMode"] == "COMPLIANCE"
    assert obj["ObjectLockRetainUntilDate"].timestamp() > time.time() + 29 * 86400
    logged(PRIMARY, UNIT, f"{backup['id']}: pg_verifybackup", f"{backup['id']}: done in")


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
    since = host_clock(REPLICA)
    on(REPLICA, f"systemctl start {UNIT}")
    logged(REPLICA, UNIT, "base backups run on the leader only; nothing to do", options=f"--since {since}")
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
    # restore_command's prefetcher (wal_restore_prefetch) served segments, and left with its spool at the promotion.
    ahead = re.findall(r"wal_archive prefetch: recovery ended; (\d+) segments fetched ahead", on(RESTORE_HOST, f"cat {RESTORE_LOG}").stdout)
    assert ahead and int(ahead[-1]) >= 1
    assert on(RESTORE_HOST, "ls -A /var/lib/postgresql/17/restore/pg_wal").stdout.split().count("mcp-prefetch") == 0
    assert on(RESTORE_HOST, "pgrep -f 'mcp-wal-archiv[e] prefetch'", check=False).returncode == 1


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
    on(PRIMARY, f"systemctl start {UNIT}", timeout=600)  # the newest backup ends after every target: not a start
    return run, {"restore_target_xid": xid, "restore_target_lsn": lsn, "restore_target_name": f"e2e-{run}"}


@pytest.mark.parametrize("kind", ["restore_target_xid", "restore_target_lsn", "restore_target_name"])
def test_point_in_time_restore_to_a_transaction_an_lsn_or_a_restore_point(s3, marked_targets, restored_cluster, kind):
    run, targets = marked_targets
    result = restore(**{kind: targets[kind]})
    assert result.returncode == 0, result.stderr[-3000:]
    assert restored_cluster(f"select string_agg(label, ',') from pitr_probe where label like '_{run}'") == f"A{run}"
    # The newest backup ends after the target: restored from it, recovery would end before reaching the target
    # and the restore fail. So success says the backup before it was chosen.
    assert lsn_of(records(s3)[-1]["end_lsn"]) > lsn_of(targets["restore_target_lsn"])


def test_a_restore_point_missing_from_the_archive_is_refused_before_any_change():
    result = restore(restore_target_name="no-such-point")
    assert result.returncode != 0 and "restore point 'no-such-point' is in none of the" in result.stdout + result.stderr
    assert on(RESTORE_HOST, "test -e /var/lib/postgresql/17/restore", check=False).returncode == 1


@pytest.mark.parametrize("target, message", [
    ("2000-01-01 00:00:00+00", "REFUSED: the target is before the oldest verified backup ended: the archive restores from "),
    ("2099-01-01 00:00:00+00", "REFUSED: the target is past the archive's end: the archive restores from "),
], ids=["before the oldest backup", "past the archive's end"])
def test_a_target_outside_the_archive_is_refused_with_its_range_before_any_change(s3, backup, target, message):
    result = restore(restore_target_time=target)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and message in output, output[-2000:]
    # The range starts where a recorded backup ended.
    assert any(f"{r['end_lsn']}, where backup {r['id']} ended) to " in output for r in records(s3)), output[-2000:]
    assert on(RESTORE_HOST, "test -e /var/lib/postgresql/17/restore", check=False).returncode == 1


def copy_prefix(source, dest, skip=(), replace=None):
    """Every object of the archive under `source`/ copied under `dest`/, metadata included (another environment's
    archive, as far as a restore can tell), records last (a record lands after its backup). `skip`: keys left
    out; `replace`: {key: body} stored instead, under the original's metadata (a tampered object)."""
    admin = client("s3", json.loads((Layout().local / "s3.json").read_text()))
    # moto refuses the signature of a listing whose prefix holds a "/": list without it, filter here.
    pages = admin.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=source)
    keys = sorted((o["Key"] for page in pages for o in page.get("Contents", []) if o["Key"].startswith(f"{source}/")),
                  key=lambda k: k.endswith("/backup.json"))
    for key in (k for k in keys if k not in skip):
        if key in (replace or {}):
            metadata = admin.head_object(Bucket=BUCKET, Key=key)["Metadata"]
            admin.put_object(Bucket=BUCKET, Key=dest + key[len(source):], Body=replace[key], Metadata=metadata)
        else:
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


@pytest.mark.parametrize("damage, message", [
    ("gap", "replay stopped at"),
    ("tampered", "does not match its stored sha256: not restored; RECOVERY ABORTED"),
])
def test_a_restore_that_cannot_read_a_segment_fails_loudly_instead_of_ending_early(backup, restored_cluster, damage,
                                                                                    message):
    """A segment in the middle of what a restore replays, missing (a gap: restore_command answers "absent", as at
    the archive's end) or altered (it answers "unreadable"), in a copy of the archive: the restore must say so."""
    on(PRIMARY, f"systemctl start {UNIT}", timeout=600)
    closed = [switch() for _ in range(3)]
    eventually(lambda: psql("select last_archived_wal from pg_stat_archiver") >= closed[-1], what=f"{closed[-1]} archived")
    middle, source = f"{PREFIX}/wal/{closed[1]}", f"e2e-{damage}-{time.time():.0f}"
    copy_prefix(PREFIX, source, **({"skip": [middle]} if damage == "gap" else {"replace": {middle: gzip.compress(b"x")}}))
    result = restore(restore_source_prefix=source, restore_source_credentials=".fleet/s3/wal-archiver.json")
    assert result.returncode != 0 and message in result.stdout + result.stderr, result.stderr[-3000:]


def test_a_restore_rides_out_a_short_s3_outage(backup, restored_cluster):
    """S3 cut as the restored copy starts replaying: restore_command tries again, and the restore completes."""
    run = f"{time.time():.0f}"
    psql("create table if not exists pitr_probe (label text, at timestamptz default now())")
    psql(f"insert into pitr_probe (label) values ('A{run}')")
    closed = psql("select pg_walfile_name(pg_switch_wal())")
    eventually(lambda: psql("select last_archived_wal from pg_stat_archiver") >= closed, what=f"{closed} archived")
    retries = f"cat {RESTORE_LOG} 2>/dev/null | grep -c '; again in 1 s' || true"  # 0 before the first restore
    before = int(on(RESTORE_HOST, retries).stdout)
    running = subprocess.Popen(pyinfra_argv("-y", "inventory/local.py", "restore.py", "--data", f"restore_host={RESTORE_HOST}"),
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        eventually(lambda: on(RESTORE_HOST, "test -e /var/lib/postgresql/17/restore/PG_VERSION", check=False).returncode == 0,
                   timeout=300, what="the backup unpacked")
        fleet("cut", "s3")
        # Healed once restore_command has met the outage and said it tries again (its tries span about a minute).
        eventually(lambda: int(on(RESTORE_HOST, retries).stdout) > before, timeout=120, what="restore_command trying again")
    finally:
        fleet("heal", "s3")
    output, _ = running.communicate(timeout=900)
    assert running.returncode == 0, output[-3000:]
    assert restored_cluster(f"select string_agg(label, ',') from pitr_probe where label like '_{run}'") == f"A{run}"


def test_a_standby_that_cannot_read_the_archive_goes_on_streaming_and_is_counted():
    fleet("cut", "s3")
    try:
        fetched = on(REPLICA, "cd /var/lib/postgresql/17/main && test -f standby.signal && runuser -u postgres -- "
                              f"{layout.program('wal-archive')} fetch 000000010000000000000002 /tmp/fetched", check=False,
                     timeout=300)
    finally:
        fleet("heal", "s3")
    assert fetched.returncode == 1 and "this standby goes on streaming from the primary" in fetched.stderr
    assert value(scrape(REPLICA, "node"), "mcp_wal_restore_last_failure_timestamp_seconds") > time.time() - 300
    assert psql("select count(*) from pg_stat_replication where state = 'streaming'") == "2"


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
    started = time.time() + 1
    forged_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    digest = hashlib.sha256(repacked.getvalue()).hexdigest()
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{forged_id}/base.tar.gz", Body=repacked.getvalue(),
                  Metadata={"sha256": digest})
    s3.copy_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{forged_id}/backup_manifest",
                   CopySource={"Bucket": BUCKET, "Key": f"{PREFIX}/backups/{backup['id']}/backup_manifest"})
    forged = dict(backup, id=forged_id, sha256=digest, size_bytes=len(repacked.getvalue()), started_at=started,
                  finished_at=started + 1, chain=[forged_id])
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{forged_id}/backup.json", Body=json.dumps(forged).encode())
    return forged_id


def forget(s3, backup_id):
    """A forged backup, deleted as an operator would: its versions stay locked, a delete marker hides them."""
    for name in ("base.tar.gz", "backup_manifest", "backup.json"):
        s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{backup_id}/{name}")


def test_a_backup_corrupted_inside_is_refused_by_pg_verifybackup(s3, backup, restored_cluster):
    forged_id = forge_corrupted_backup(s3, backup)
    try:
        result = restore()
        assert result.returncode != 0
        assert "pg_verifybackup" in result.stderr and "checksum mismatch" in result.stderr
        assert on(RESTORE_HOST, "test -e /var/lib/postgresql/17/restore", check=False).returncode == 1
    finally:
        forget(s3, forged_id)


def versions(s3, key):
    listed = s3.list_object_versions(Bucket=BUCKET, Prefix=PREFIX)
    return [v for v in listed.get("Versions", []) + listed.get("DeleteMarkers", []) if v["Key"] == key]


def test_a_locked_version_is_not_deleted_by_the_retention_keys_even_with_the_bypass_header(s3, backup):
    key = f"{PREFIX}/backups/{backup['id']}/backup.json"
    retention = client("s3", dict(json.loads((Layout().local / "s3.json").read_text()),
                                  **json.loads((Layout().local / "s3" / "backup-retention.json").read_text())))
    version = versions(s3, key)[0]["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        retention.delete_object(Bucket=BUCKET, Key=key, VersionId=version, BypassGovernanceRetention=True)
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    assert versions(s3, key)[0]["VersionId"] == version


@pytest.mark.xfail(strict=True, reason="moto authorizes PutObjectRetention as PutObject: on the fleet the hosts' keys "
                                       "can shorten a lock; AWS refuses any shortening of a COMPLIANCE lock, and the "
                                       "documented policy denies the hosts s3:PutObjectRetention (docs/backups.md)")
def test_the_hosts_keys_cannot_shorten_a_lock(s3, backup):
    key = f"{PREFIX}/backups/{backup['id']}/backup.json"
    hosts = client("s3", dict(json.loads((Layout().local / "s3.json").read_text()),
                              **json.loads((Layout().local / "s3" / "wal-archiver.json").read_text())))
    until = s3.head_object(Bucket=BUCKET, Key=key)["ObjectLockRetainUntilDate"]
    with pytest.raises(botocore.exceptions.ClientError):
        hosts.put_object_retention(Bucket=BUCKET, Key=key, Retention={
            "Mode": "COMPLIANCE", "RetainUntilDate": until - datetime.timedelta(days=1)})


def expire_locks(s3):
    """Stands in for the window's passing: moto lets the fleet's admin shorten a COMPLIANCE lock (S3 lets no one),
    so every version under the prefix can be deleted two seconds from now."""
    until = time.time() + 2
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=PREFIX)
    for version in (v for page in pages for v in page.get("Versions", []) if v["Key"].startswith(f"{PREFIX}/")):
        s3.put_object_retention(Bucket=BUCKET, Key=version["Key"], VersionId=version["VersionId"], Retention={
            "Mode": "COMPLIANCE", "RetainUntilDate": datetime.datetime.fromtimestamp(until, datetime.timezone.utc)})
    time.sleep(max(0.0, until - time.time()) + 1)


def forge_record_with_the_hosts_keys(newest):
    """The audit's forgery, made with the database hosts' put-only keys: the newest id, verified, finished at 0,
    starting at the end of all WAL. Trusted, it would make retention delete every real backup and segment."""
    started = time.time()
    forged_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    record = dict(newest, id=forged_id, started_at=started, finished_at=0, start_lsn="FFFFFFFF/0", verified=True)
    keys = json.loads((Layout().local / "s3" / "wal-archiver.json").read_text())
    hosts = client("s3", dict(json.loads((Layout().local / "s3.json").read_text()), **keys))
    hosts.put_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{forged_id}/backup.json", Body=json.dumps(record).encode())
    return forged_id


def test_retention_keeps_a_restore_to_any_time_in_the_window_and_the_newest_backup(s3, backup, restored_cluster):
    on(PRIMARY, f"systemctl start {UNIT}", timeout=600)
    kept = records(s3)[-1]
    run = f"{time.time():.0f}"
    psql("create table if not exists retention_probe (label text, at timestamptz default now())")
    time.sleep(4)  # room for the window to open between `kept` and 'inside' (each run sets it anew)
    psql(f"insert into retention_probe (label) values ('inside{run}')")
    inside = float(psql("select extract(epoch from now())"))
    inside_text = psql("select now()")
    time.sleep(1.5)
    psql(f"insert into retention_probe (label) values ('later{run}')")
    on(PRIMARY, f"systemctl start {UNIT}", timeout=600)
    newest = records(s3)[-1]
    forged = forge_record_with_the_hosts_keys(newest)
    try:
        check_retention(s3, backup, kept, newest, forged, inside, inside_text, run, restored_cluster)
    finally:
        s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/backups/{forged}/backup.json")
    on(PRIMARY, f"{RETENTION} --window-days 30 --max-delete-percent 100")
    assert value(scrape(PRIMARY, "node"), "mcp_backup_retention_refused_records") == 0  # a deleted record is gone


def check_retention(s3, backup, kept, newest, forged, inside, inside_text, run, restored_cluster):
    old_segment = f"{PREFIX}/wal/" + psql(f"select pg_walfile_name('{backup['start_lsn']}')")
    opens = (kept["finished_at"] + inside) / 2  # the window opens after `kept` finished and before 'inside'
    window = lambda: f"{(time.time() + 1 - opens) / 86400:.10f}"  # noqa: E731 (a run starts about 1 s later)
    locked = on(PRIMARY, f"{RETENTION} --window-days {window()} --max-delete-percent 100").stdout
    assert "still locked are kept" in locked and versions(s3, old_segment)  # within the 30-day lock
    older = [r for r in records(s3) if r["id"] < kept["id"]]
    assert backup["id"] in [r["id"] for r in older], "this module's first backup is there to delete"
    expire_locks(s3)
    capped = on(PRIMARY, f"{RETENTION} --window-days {window()} --max-delete-percent 1", check=False)
    assert capped.returncode == 1 and "more than 1% (backup_retention_max_delete_percent): nothing deleted" in capped.stderr
    assert versions(s3, old_segment) and [r["id"] for r in records(s3) if r["id"] < kept["id"]] == [r["id"] for r in older]
    ran = on(PRIMARY, f"{RETENTION} --window-days {window()} --max-delete-percent 100").stdout
    assert f"REFUSED backup {forged}: " in ran and "it does not count and its objects are kept" in ran
    assert value(scrape(PRIMARY, "node"), "mcp_backup_retention_refused_records") == 1
    left = records(s3)
    assert [r["id"] for r in left] == [kept["id"], newest["id"], forged]  # the forgery is kept: evidence
    assert all(versions(s3, f"{PREFIX}/backups/{r['id']}/base.tar.gz") == [] for r in older)  # every version gone
    assert versions(s3, old_segment) == []
    assert restore(restore_target_time=inside_text).returncode == 0
    assert restored_cluster(f"select string_agg(label, ',') from retention_probe where label like '%{run}'") == f"inside{run}"
    expire_locks(s3)
    on(PRIMARY, f"{RETENTION} --window-days 0.000001 --max-delete-percent 100")  # smaller than any backup's age
    assert [r["id"] for r in records(s3)] == [newest["id"], forged]


def test_the_archive_keys_cannot_run_retention(s3):
    on(PRIMARY, f"systemctl start {UNIT}", timeout=600)  # the backup before it becomes deletable
    doomed = records(s3)[-2]
    expire_locks(s3)
    attempt = on(PRIMARY, f"runuser -u postgres -- {layout.program('base-backup')} retain --window-days 0.000001 "
                          "--max-delete-percent 100 --credentials /etc/mcp-portal/wal-archiver.json", check=False)
    assert attempt.returncode != 0 and "AccessDenied" in attempt.stdout + attempt.stderr
    assert doomed["id"] in [r["id"] for r in records(s3)]


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
    since = host_clock(REPLICA)
    on(REPLICA, f"systemctl start {DRILL}")
    logged(REPLICA, DRILL, "the restore drill run on the leader only; nothing to do", options=f"--since {since}")


def test_a_drill_on_a_backup_corrupted_inside_fails_loudly_and_is_recorded(s3):
    forged_id = forge_corrupted_backup(s3, records(s3)[-1])  # retention may have removed older ones
    try:
        result, outcome = run_drill()
        assert outcome != "success" and not result["ok"] and "pg_verifybackup" in result["error"]
        assert on(DRILL_HOST, f"test -f /var/lib/mcp-portal/failures/{DRILL}.json").returncode == 0
        assert value(scrape(DRILL_HOST, "node"), "mcp_restore_drill_success") == 0
        assert unit_failed(DRILL_HOST, DRILL) is not None
    finally:
        forget(s3, forged_id)
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
