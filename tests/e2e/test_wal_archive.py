"""WAL archiving on the fleet, read back independently from S3 with the fleet's admin keys: segments land with
their checksum, a duplicate is success, a different segment under the same name and an old timeline are refused
(and counted by PostgreSQL), an S3 outage loses nothing, a dying uploader never acknowledges, restore_command
checks what it fetches, a restore refuses an archive where a segment was overwritten, and the preflight stops a
deploy that could not archive (the bucket's lock included)."""

import datetime
import gzip
import hashlib
import json
import time

import pytest

from fleet.layout import Layout
from fleet.s3endpoint import client
from hostside import layout
from hostside.wal_archive import CURRENT_TIMELINE_SQL
from tests.e2e.test_deploy import deploy, pyinfra_run
from tests.fleet_helpers import fleet, on

PRIMARY = "pg-1"
PROGRAM = layout.program("wal-archive")
BACKUP_UNIT = "mcp-base-backup.service"
TIER = json.loads((Layout().local / "s3" / "tier.json").read_text()) if (Layout().local / "s3" / "tier.json").exists() else {}
BUCKET, PREFIX = TIER.get("bucket"), "local"


@pytest.fixture(scope="module")
def s3():
    return client("s3", json.loads((Layout().local / "s3.json").read_text()))


def psql(sql, host=PRIMARY):
    return on(host, f"runuser -u postgres -- psql -XtAc \"{sql}\"").stdout.strip()


def archiver():
    return dict(zip(("archived", "failed", "last_archived", "last_failed"),
                    psql("select archived_count, failed_count, coalesce(last_archived_wal, ''), "
                         "coalesce(last_failed_wal, '') from pg_stat_archiver").split("|")))


def switch():
    """Close the current segment (after a write, so there is one) and return its name."""
    psql("create table if not exists archive_probe (at timestamptz); insert into archive_probe values (now())")
    return psql("select pg_walfile_name(pg_switch_wal())")


def eventually(check, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        time.sleep(0.5)


def stored(s3, name):
    obj = s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/wal/{name}")
    body = obj["Body"].read()
    raw = gzip.decompress(body) if obj["Metadata"]["compression"] == "gzip" else body
    return obj, raw


def test_a_closed_segment_lands_in_s3_with_the_checksum_of_its_raw_bytes(s3):
    name = switch()
    eventually(lambda: archiver()["last_archived"] >= name, what=f"{name} archived")
    obj, raw = stored(s3, name)
    assert len(raw) == 16 * 1024 * 1024 and obj["Metadata"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert obj["ServerSideEncryption"] == "aws:kms" and obj["SSEKMSKeyId"].endswith(TIER["kms_key_id"])
    cluster = s3.head_object(Bucket=BUCKET, Key=f"{PREFIX}/cluster.json")["Metadata"]["system-identifier"]
    assert cluster == psql("select system_identifier from pg_control_system()")


def test_archiving_the_same_segment_again_is_success(s3):
    name = switch()
    eventually(lambda: archiver()["last_archived"] >= name, what=f"{name} archived")
    # The archived copy, fetched back to a file, pushed again under its own name.
    pushed = on(PRIMARY, f"cd /tmp && runuser -u postgres -- {PROGRAM} fetch {name} /tmp/{name} && "
                         f"runuser -u postgres -- {PROGRAM} push /tmp/{name} {name}; rc=$?; rm -f /tmp/{name}; exit $rc",
                check=False)
    assert pushed.returncode == 0, pushed.stderr


def test_a_different_segment_under_an_archived_name_is_refused_loudly(s3):
    on(PRIMARY, f"systemctl start {BACKUP_UNIT}", timeout=600)  # a backup whose restore reads the segment below
    upcoming = psql("select pg_walfile_name(pg_current_wal_lsn())")
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/wal/{upcoming}", Body=b"another server's segment",
                  Metadata={"sha256": hashlib.sha256(b"another server's segment").hexdigest(), "compression": "none"})
    failed = int(archiver()["failed"])
    target = psql("select pg_current_wal_lsn()")  # in that segment: a restore to it reads the segment
    try:
        switch()
        eventually(lambda: int(archiver()["failed"]) > failed, what="a failed archive attempt")
        assert archiver()["last_failed"] == upcoming
        log = on(PRIMARY, "tail -n 200 /var/log/postgresql/postgresql-17-main.log").stdout
        assert f"SPLIT BRAIN? s3://{BUCKET}/{PREFIX}/wal/{upcoming} already holds a different {upcoming}" in log
        assert on(PRIMARY, f"test -f /var/lib/postgresql/17/main/pg_wal/archive_status/{upcoming}.ready").returncode == 0
    finally:
        s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/wal/{upcoming}")
    eventually(lambda: archiver()["last_archived"] >= upcoming, what=f"{upcoming} archived once the impostor left")
    # The impostor's version stays under the delete marker (locked): a restore that reads this segment refuses.
    refused = on(PRIMARY, f"runuser -u postgres -- {layout.program('base-backup')} restore "
                          f"/var/lib/postgresql/refused-restore --target-lsn {target}", check=False)
    assert refused.returncode == 1
    assert f"REFUSED: s3://{BUCKET}/{PREFIX}/wal/{upcoming} (and 0 more) holds versions with different content" in refused.stderr
    assert on(PRIMARY, "test -e /var/lib/postgresql/refused-restore", check=False).returncode == 1
    on(PRIMARY, f"systemctl start {BACKUP_UNIT}", timeout=600)  # restores from here on start past the impostor


def test_a_segment_past_the_end_of_its_timeline_in_the_archive_is_refused(s3):
    """The archiver's own refusal, a second line of defence behind Patroni: a segment of a timeline the archive shows
    a later one replaced (a history file put there by hand here) is not archived."""
    timeline = int(psql(f"select {CURRENT_TIMELINE_SQL}"))
    later = f"{timeline + 1:08X}.history"
    history = f"{timeline}\t0/3000000\tno recovery target\n".encode()
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/history/{later}", Body=history,
                  Metadata={"sha256": hashlib.sha256(history).hexdigest(), "compression": "none"})
    failed = int(archiver()["failed"])
    try:
        name = switch()
        eventually(lambda: int(archiver()["failed"]) > failed, what="a failed archive attempt")
        log = on(PRIMARY, "tail -n 200 /var/log/postgresql/postgresql-17-main.log").stdout
        assert f"{name} is on timeline {timeline}, which the archive shows ended at 0/3000000 (timeline {timeline + 1})" in log
    finally:
        erase(s3, f"{PREFIX}/history/{later}")
    switch()  # a new segment wakes the archiver, which retries the refused one now rather than within a minute
    eventually(lambda: archiver()["last_archived"] >= name, what=f"{name} archived after the history file left")


def erase(s3, key):
    """Every version of `key` gone, as if never written: a real promotion archives this history file later (the
    drills'), and restores refuse a key whose versions differ. Only the fleet can: moto lets its admin shorten a
    COMPLIANCE lock, S3 lets no one."""
    until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=key)
    listed = [v for page in pages for v in page.get("Versions", []) + page.get("DeleteMarkers", []) if v["Key"] == key]
    for version in listed:
        if "Size" in version:  # a version, not a delete marker: locked
            s3.put_object_retention(Bucket=BUCKET, Key=key, VersionId=version["VersionId"],
                                    Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until})
    time.sleep(3)
    for version in listed:
        s3.delete_object(Bucket=BUCKET, Key=key, VersionId=version["VersionId"])


def test_an_s3_outage_keeps_the_wal_and_the_archive_catches_up_without_a_gap(s3):
    fleet("cut", "s3")
    try:
        names = [switch() for _ in range(3)]
        eventually(lambda: archiver()["last_failed"] >= names[0], timeout=90, what="a failed attempt during the outage")
        for name in names:
            assert on(PRIMARY, f"test -f /var/lib/postgresql/17/main/pg_wal/{name}").returncode == 0
    finally:
        fleet("heal", "s3")
    eventually(lambda: archiver()["last_archived"] >= names[-1], timeout=120, what="the archive caught up")
    first, last = int(names[0][16:], 16), int(names[-1][16:], 16)
    for segment in (names[0][:16] + f"{n:08X}" for n in range(first, last + 1)):  # every one, no gap
        obj, raw = stored(s3, segment)
        assert obj["Metadata"]["sha256"] == hashlib.sha256(raw).hexdigest()


def test_an_uploader_killed_mid_upload_never_acknowledges():
    # A segment-sized file under a name this fleet never reaches (log 0xA: 160 GB of WAL), so nothing real collides.
    fake = "000000010000000A00000000"
    on(PRIMARY, f"head -c 16777216 /dev/urandom > /tmp/{fake} && chown postgres /tmp/{fake}")
    fleet("cut", "s3")  # the upload hangs on the network, so the kill lands mid-upload
    try:
        started = on(PRIMARY, f"(runuser -u postgres -- {PROGRAM} push /tmp/{fake} {fake} > /tmp/push.out 2>&1; "
                              "echo $? > /tmp/push.rc) & sleep 2; "
                              "systemctl kill -s KILL mcp-wal-archive.service; sleep 1; cat /tmp/push.rc; cat /tmp/push.out",
                     timeout=60)
        rc, *output = started.stdout.split("\n", 1)
        assert rc.strip() == "1" and "closed the connection before confirming the upload" in "".join(output)
    finally:
        fleet("heal", "s3")
        on(PRIMARY, f"rm -f /tmp/{fake}")
    eventually(lambda: on(PRIMARY, "systemctl is-active mcp-wal-archive.service", check=False).stdout.strip() == "active",
               what="the uploader restarted")


def test_restore_command_refuses_an_object_that_does_not_match_its_checksum(s3):
    name = "0000000100000000000000FE"
    s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/wal/{name}", Body=b"tampered",
                  Metadata={"sha256": hashlib.sha256(b"original").hexdigest(), "compression": "none"})
    # restore_command runs in the data directory: standby.signal there makes a failure "try again" (1), its
    # absence (a restore, recovery.signal) "abort recovery" (255).
    standby = "mkdir -p /tmp/standby && touch /tmp/standby/standby.signal && cd /tmp/standby && "
    try:
        for cwd, status in (("cd /tmp && ", 255), (standby, 1)):
            fetched = on(PRIMARY, f"{cwd}runuser -u postgres -- {PROGRAM} fetch {name} /tmp/{name}", check=False)
            assert fetched.returncode == status and "does not match its stored sha256: not restored" in fetched.stderr
            assert on(PRIMARY, f"test -e /tmp/{name}", check=False).returncode == 1
            missing = on(PRIMARY, f"{cwd}runuser -u postgres -- {PROGRAM} fetch 0000000100000000000000FF /tmp/x",
                         check=False)
            assert missing.returncode == 1  # absent: the archive's end, for either
    finally:
        on(PRIMARY, "rm -rf /tmp/standby")
        s3.delete_object(Bucket=BUCKET, Key=f"{PREFIX}/wal/{name}")


def test_the_database_hosts_keys_cannot_delete_from_the_archive():
    attempt = on(PRIMARY, f"python3 -c \"import sys; sys.path.insert(0, '{layout.LIB_DIR}'); "
                          "from hostside import wal_archive as w; c = w.load_config(); "
                          f"w.client(c, 's3').delete_object(Bucket=c['bucket'], Key='{PREFIX}/cluster.json')\"",
                 check=False)
    assert attempt.returncode != 0 and "AccessDenied" in attempt.stderr


@pytest.mark.parametrize("override, message", [
    ("wal_archive_bucket=no-such-bucket", "bucket no-such-bucket does not exist"),
    ("wal_archive_kms_key_id=alias/no-such-key", "the KMS key alias/no-such-key cannot be used"),
    ("wal_archive_prefix=someone-else", "s3://mcp-portal-archive/someone-else belongs to cluster 1234567890"),
    ("wal_archive_bucket=unlocked", "bucket unlocked has no Object Lock; it needs a default COMPLIANCE lock of at "
                                    "least 31.1 days: the recovery window (30 days, backup_retention_days)"),
    ("backup_retention_days=45", "bucket mcp-portal-archive has a default COMPLIANCE lock of 32 days; it needs"),
    ("backup_full_every_days=7", "lock of 32 days; it needs a default COMPLIANCE lock of at least 38.1 days: the "
                                 "recovery window (30 days, backup_retention_days) and the age of the base backup a "
                                 "restore to its start may need (8.1 days: backup_max_age_h 26 + backup_full_every_days 7)"),
])
def test_the_preflight_stops_a_deploy_that_could_not_archive(s3, override, message):
    s3.put_object(Bucket=BUCKET, Key="someone-else/cluster.json", Body=b"{}", Metadata={"system-identifier": "1234567890"})
    s3.create_bucket(Bucket="unlocked")  # versioned, but without Object Lock
    s3.put_bucket_versioning(Bucket="unlocked", VersioningConfiguration={"Status": "Enabled"})
    conf = "/etc/postgresql/17/main/mcp-portal.conf"
    before = on(PRIMARY, f"md5sum {conf}").stdout
    result = pyinfra_run("-y", "--data", override)
    assert result.returncode != 0 and message in result.stderr
    assert on(PRIMARY, f"md5sum {conf}").stdout == before


def test_wrong_credentials_are_refused_before_any_change(tmp_path):
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"access_key_id": "AKIAWRONG", "secret_access_key": "wrong"}')
    result = pyinfra_run("-y", "--data", f"wal_archive_credentials={wrong}")
    assert result.returncode != 0 and "the archive credentials are refused for bucket mcp-portal-archive" in result.stderr


def test_a_second_deploy_leaves_the_archiver_alone():
    output = deploy()
    assert "The resident uploader runs" in output and "Restart PostgreSQL" not in output


def test_during_an_s3_outage_the_preflight_stops_the_deploy_unless_switched_off():
    fleet("cut", "s3")
    try:
        # --limit: on the fleet the endpoint is an inventory host, and a cut host is unreachable by ssh as well.
        tier = ("--limit", "database", "--limit", "pgbouncer")
        refused = pyinfra_run("-y", *tier)
        assert refused.returncode != 0 and "cannot reach the S3 endpoint" in refused.stderr, refused.stderr[-2000:]
        shipped = pyinfra_run("-y", "--data", "wal_archive_preflight=false", *tier)
        assert shipped.returncode == 0, shipped.stderr[-2000:]
    finally:
        fleet("heal", "s3")
