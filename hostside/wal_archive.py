#!/usr/bin/python3
"""PostgreSQL's WAL archive on S3: archive_command, restore_command, a resident uploader and a preflight check.

    wal_archive.py push PATH NAME    archive_command = '... push %p %f'
    wal_archive.py fetch NAME DEST   restore_command = '... fetch %f %p': 0 fetched, 1 absent (or, on a standby,
                                     unreadable after retries), 255 unreadable in a restore: recovery aborts
    wal_archive.py prefetch PID      fetches ahead of fetch while recovery process PID runs; fetch starts it
    wal_archive.py serve             the resident uploader (mcp-wal-archive.service) push hands off to
    wal_archive.py check             can this host archive? (bucket, credentials, KMS key, clock, prefix owner)
    wal_archive.py seal TIMELINE     after a promotion to TIMELINE: no gap in the parent timeline up to the switch

Safety model (pgBackRest's): a put is conditional (If-None-Match), the SHA-256 of the raw segment is stored with
the object and compared on every collision and every restore; success is reported only once S3 holds an
object with this segment's checksum. The prefix belongs to one cluster (cluster.json, its system identifier),
and a segment on a timeline older than the archive's newest .history file is refused: it comes from a primary
that a failover replaced. Configuration: /etc/mcp-portal/wal-archive.json, written by the deploy.
Plain Python 3 with Debian's python3-boto3, imported only where S3 is used, so `push` starts fast.
"""

import base64
import contextlib
import email.utils
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import socketserver
import struct
import sys
import time
import zlib

from hostside import layout, textfile

CONFIG = layout.config("wal-archive.json")
COMPRESSIONS = {"none": (lambda data: data, lambda data: data), "gzip": (lambda data: gzip.compress(data, 1), gzip.decompress)}
HISTORY = re.compile(r"^[0-9A-F]{8}\.history$")
WAL_FILE = re.compile(r"^[0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?$")
SEGMENT = re.compile(r"^[0-9A-F]{24}$")
WAL_SEGMENT_BYTES = 16 * 2**20
SEGMENTS_PER_ID = 2**32 // WAL_SEGMENT_BYTES
# The timeline a cluster is on now (an SQL expression): a standby's received one, a primary's current WAL file's.
# pg_control_checkpoint() lags a promotion until the next checkpoint or restartpoint.
CURRENT_TIMELINE_SQL = ("(case when pg_is_in_recovery() then coalesce((select received_tli from pg_stat_wal_receiver), "
                        "(select timeline_id from pg_control_checkpoint())) "
                        "else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int end)")
HANDOFF_TIMEOUT_S = 600  # the uploader answers within this, or the push fails (PostgreSQL retries)
# restore_command: a failed fetch is tried again after these pauses before it counts: about a minute in a
# restore; briefly on a standby, which has the primary to stream from.
FETCH_PAUSES_S = {"restore": (1, 2, 4, 8, 15, 30), "standby": (1,)}
# PostgreSQL aborts recovery when restore_command exits above 125; 1 means "no such file", the archive's end.
ABORT_RECOVERY = 255
MAX_CLOCK_SKEW_S = 300  # S3 refuses signatures beyond 15 min; warn well before
PREFETCH_DIR = "mcp-prefetch"  # in pg_wal (class Prefetch)
PREFETCH_IDLE_S = 60  # a prefetcher that was asked for nothing this long leaves, and empties its spool
PREFETCH_WAIT_S = 30  # restore_command waits this long for a segment on its way, then fetches it itself


class ArchiveError(Exception):
    """One line for PostgreSQL's log: what failed, and what to do."""


def load_config(path=CONFIG):
    with open(path) as f:
        return json.load(f)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def lsn(text):
    """'16/B374D848' -> a byte position."""
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def format_lsn(position):
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def segment_position(name):
    """Where a full segment starts (16 MiB segments, PostgreSQL's default and the tier's)."""
    return int(name[8:16], 16) * SEGMENTS_PER_ID * WAL_SEGMENT_BYTES + int(name[16:24], 16) * WAL_SEGMENT_BYTES


def segment_end(name):
    return segment_position(name) + WAL_SEGMENT_BYTES


def segment_name(timeline, position):
    """The segment of `timeline` that holds byte `position`."""
    number = position // WAL_SEGMENT_BYTES
    return f"{timeline:08X}{number // SEGMENTS_PER_ID:08X}{number % SEGMENTS_PER_ID:08X}"


def segment_range(first, last):
    """Segment names from `first` to `last` inclusive, on `first`'s timeline."""
    timeline = timeline_of(first)
    return [segment_name(timeline, p) for p in range(segment_position(first), segment_position(last) + 1, WAL_SEGMENT_BYTES)]


def timeline_of(name):
    return int(name[:8], 16)


class Archive:
    """The archive prefix of one cluster in one bucket."""

    def __init__(self, config, s3=None):
        self.config = config
        self.prefix = config["prefix"].strip("/")
        self.bucket = config["bucket"]
        self._s3 = s3

    @property
    def s3(self):
        if self._s3 is None:
            self._s3 = client(self.config, "s3")
        return self._s3

    def key(self, name):
        return f"{self.prefix}/{'history' if HISTORY.match(name) else 'wal'}/{name}"

    def _sse(self):
        sse = self.config.get("sse") or ""
        if sse == "aws:kms":
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.config["kms_key_id"]}
        return {"ServerSideEncryption": sse} if sse else {}

    def put_new(self, key, body, metadata=None):
        """Put `body` under `key` unless an object is there (PreconditionFailed), with checksums and SSE. S3 wants
        Content-MD5 or the SDK's checksum on a write into a locked bucket; the fleet's moto only the first."""
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*", Metadata=metadata or {},
                           ChecksumAlgorithm="SHA256", ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),
                           **self._sse())

    def _put_if_absent(self, key, body, metadata):
        """True if this put created the object, False if one was already there."""
        from botocore.exceptions import ClientError
        try:
            self.put_new(key, body, metadata)
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "412"):
                return False
            raise

    def _head(self, key):
        from botocore.exceptions import ClientError
        try:
            return self.s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def owner(self):
        """The system identifier of the cluster the prefix belongs to (its cluster.json), or None before a claim."""
        return (self._head(f"{self.prefix}/cluster.json") or {}).get("Metadata", {}).get("system-identifier")

    def system_identifier(self):
        """The cluster's system identifier: the first 8 bytes of pg_control, read on every call (a replica's
        clone replaces the cluster under a running uploader); the config may name it instead."""
        if "system_identifier" in self.config:
            return str(self.config["system_identifier"])
        with open(os.path.join(self.config["data_directory"], "global", "pg_control"), "rb") as f:
            return str(struct.unpack("<Q", f.read(8))[0])

    def check_owner(self):
        """The prefix is this cluster's: the primary claims it if nobody has; any other cluster is refused."""
        ours = self.system_identifier()
        key = f"{self.prefix}/cluster.json"
        claim = json.dumps({"system_identifier": ours}).encode()
        # Only the deploy's primary may claim: a replica's cluster before its clone is a primary of its own.
        if self.config.get("claim_prefix") and self._put_if_absent(key, claim, {"system-identifier": ours}):
            return
        theirs = (self._head(key) or {}).get("Metadata", {}).get("system-identifier")
        if theirs != ours:
            whose = f"cluster {theirs}" if theirs else "no cluster yet (the primary claims it)"
            raise ArchiveError(f"s3://{self.bucket}/{self.prefix} belongs to {whose}, not to this cluster ({ours}): "
                               "not archived; a new cluster needs its own wal_archive_prefix")

    def switchpoint(self, timeline):
        """Where `timeline` ended (a byte position), from the next timeline's history file; None while `timeline`
        is the newest. PostgreSQL numbers a new timeline one past the newest history file it finds probing
        upwards, so history files are contiguous: one request is enough."""
        history = self.read(f"{timeline + 1:08X}.history")
        if history is None:
            return None
        for line in history.decode().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == str(timeline):
                return lsn(fields[1])
        raise ArchiveError(f"{timeline + 1:08X}.history does not say where timeline {timeline} ended")

    def moved_past(self, timeline):
        """True when this server has a later timeline's history file: it followed or made a newer timeline, so a
        segment of `timeline` it still holds is a leftover, not the writes of a replaced primary."""
        wal_dir = os.path.join(self.config["data_directory"], "pg_wal")
        return any(HISTORY.match(f) and int(f[:8], 16) > timeline for f in os.listdir(wal_dir))

    def superseded(self, timeline):
        """True when a promotion has ended `timeline`: the archive has the next timeline's history file."""
        return self._head(self.key(f"{timeline + 1:08X}.history")) is not None

    def push(self, path, name):
        if not (WAL_FILE.match(name) or HISTORY.match(name)):
            raise ArchiveError(f"{name} is not a WAL segment, partial segment, backup label or timeline history file")
        with open(path, "rb") as f:
            data = f.read()
        digest = sha256(data)
        self.check_owner()
        # An old primary that comes back after a failover writes names the new one never writes: only its
        # timeline gives it away. What both timelines share (segments that end at or before the switch) may be
        # archived by either; a promotion archives the old timeline's last segment as .partial: allowed.
        if SEGMENT.match(name):
            ended = self.switchpoint(timeline_of(name))
            if ended is not None and segment_end(name) > ended:
                if self.moved_past(timeline_of(name)):
                    return (f"not archived: timeline {timeline_of(name)} ended at {format_lsn(ended)}, before this "
                            "segment's end, and this server has moved to a later timeline (a file left from before "
                            "it rejoined); the archive keeps the timeline that won")
                raise ArchiveError(f"{name} is on timeline {timeline_of(name)}, which the archive shows ended at "
                                   f"{format_lsn(ended)} (timeline {timeline_of(name) + 1}): this server was replaced "
                                   "by a promoted replica and must not archive; rejoin it as a replica (docs/failover.md)")
        compression = self.config.get("compression", "gzip")
        key = self.key(name)
        created = self._put_if_absent(key, COMPRESSIONS[compression][0](data),
                                      {"sha256": digest, "compression": compression})
        stored = ((self._head(key) or {}).get("Metadata") or {}).get("sha256")
        if stored != digest:
            if not created:
                raise ArchiveError(f"SPLIT BRAIN? s3://{self.bucket}/{key} already holds a different {name} "
                                   f"(sha256 {stored}, this one {digest}); two servers archive into one prefix: stop "
                                   "the one that is not the primary, keep both files, and investigate")
            raise ArchiveError(f"s3://{self.bucket}/{key} does not show this segment's checksum after the upload")
        return "archived" if created else "already archived, same checksum"

    def read(self, name):
        """The content of `name`, checked against its stored checksum; None when the archive lacks it."""
        from botocore.exceptions import ClientError
        try:
            obj = self.s3.get_object(Bucket=self.bucket, Key=self.key(name))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        metadata = obj.get("Metadata") or {}
        try:
            data = COMPRESSIONS[metadata.get("compression", "none")][1](obj["Body"].read())
        except (OSError, EOFError, zlib.error, KeyError) as exc:  # not what the archiver stored: same verdict
            raise ArchiveError(f"s3://{self.bucket}/{self.key(name)} does not decompress ({exc}): not restored") from None
        if sha256(data) != metadata.get("sha256"):
            raise ArchiveError(f"s3://{self.bucket}/{self.key(name)} does not match its stored sha256: not restored")
        return data

    def segments(self, timeline):
        """The names of the full segments of `timeline` in the archive (only its keys are listed)."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                  Prefix=f"{self.prefix}/wal/{timeline:08X}")
        names = {obj["Key"].rsplit("/", 1)[1] for page in pages for obj in page.get("Contents", [])}
        return sorted(n for n in names if SEGMENT.match(n))

    def seal(self, timeline, wal_dir):
        """After a promotion to `timeline`: the parent timeline's segments, from its first archived one up to the
        switch, must all be in the archive (a point-in-time restore from an older backup replays through them).
        Missing ones still in `wal_dir` are archived from there (both timelines share them). Returns (parent,
        switch segment, archived now, still missing)."""
        history = self.read(f"{timeline:08X}.history")
        if history is None:
            raise ArchiveError(f"the archive has no {timeline:08X}.history: the promotion's history is not archived yet")
        entries = [line.split() for line in history.decode().splitlines() if line.strip() and not line.startswith("#")]
        parent, ended = int(entries[-1][0]), lsn(entries[-1][1])  # the last line: the timeline it branched from
        archived = self.segments(parent)
        last = segment_name(parent, ended - 1)  # the segment holding the switch: archived as .partial
        wanted = segment_range(archived[0], last) if archived else []
        backfilled, missing = [], []
        for name in (n for n in wanted if n != last and n not in archived):
            path = os.path.join(wal_dir, name)
            if os.path.exists(path):
                self.push(path, name)
                backfilled.append(name)
            else:
                missing.append(name)
        return parent, last, backfilled, missing

    def fetch_patiently(self, name, dest, pauses, sleep=time.sleep):
        """fetch(), tried again after each of `pauses` while S3 fails (unreachable, 5xx, throttled, refused); the
        last failure is raised. A missing object is an answer; an object that does not match its checksum is one
        too (refused at once: reading it again gives the same bytes)."""
        for pause in (*pauses, None):
            try:
                return self.fetch(name, dest)
            except ArchiveError:
                raise
            except Exception as exc:  # noqa: BLE001 (anything else from S3 or the network may pass)
                if pause is None:
                    raise
                print(f"wal_archive fetch {name}: {type(exc).__name__}: {exc}; again in {pause} s".replace("\n", " "),
                      file=sys.stderr, flush=True)
                sleep(pause)

    def fetch(self, name, dest):
        """Write `name` to `dest`, checked against its stored checksum; False when the archive lacks it."""
        data = self.read(name)
        if data is None:
            return False
        partial = f"{dest}.fetching"
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(partial, dest)
        return True


def session(config):
    """A boto3 session with the keys of `credentials_file` (JSON: access_key_id, secret_access_key), or boto3's
    default chain (an instance role) when the config names none."""
    import boto3
    keys = {}
    if config.get("credentials_file"):
        with open(config["credentials_file"]) as f:
            stored = json.load(f)
        keys = {"aws_access_key_id": stored["access_key_id"], "aws_secret_access_key": stored["secret_access_key"]}
    return boto3.session.Session(region_name=config.get("region") or "us-east-1", **keys)


def client(config, service):
    import botocore.config
    return session(config).client(service, endpoint_url=config.get("endpoint_url") or None, config=botocore.config.Config(
        connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}))


def clock_skew_problem(endpoint_date, host_epoch, limit_s=MAX_CLOCK_SKEW_S):
    """A one-line problem if the host's clock is more than `limit_s` from the endpoint's Date header, else None."""
    endpoint_epoch = email.utils.parsedate_to_datetime(endpoint_date).timestamp()
    skew = host_epoch - endpoint_epoch
    if abs(skew) > limit_s:
        return (f"this host's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} the S3 endpoint's "
                f"(limit {limit_s} s): S3 refuses requests signed with a skewed clock; fix NTP on the host")
    return None


def preflight(config, host_epoch, system_identifier, s3=None, kms=None):
    """Problems that would leave archive_command failing silently, one line each ([] when none).
    `system_identifier`: the cluster that will archive (None: no cluster yet, the prefix is not checked)."""
    from botocore.exceptions import BotoCoreError, ClientError
    archive = Archive(config, s3)
    where = f"s3://{config['bucket']}/{archive.prefix}"
    try:
        head = archive.s3.head_bucket(Bucket=config["bucket"])
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in ("404", "NoSuchBucket"):
            return [f"bucket {config['bucket']} does not exist at {config.get('endpoint_url') or 'AWS'}; create it (versioning on)"]
        return [f"the archive credentials are refused for bucket {config['bucket']} ({code}); check the credentials file"]
    except BotoCoreError as exc:
        return [f"cannot reach the S3 endpoint {config.get('endpoint_url') or 'AWS'}: {exc}"]
    problems = []
    skew = clock_skew_problem(head["ResponseMetadata"]["HTTPHeaders"]["date"], host_epoch)
    if skew:
        problems.append(skew)
    try:
        owner = archive.owner()
    except ClientError as exc:
        return problems + [f"the archive credentials cannot read {where} ({exc.response['Error']['Code']})"]
    if owner and system_identifier and owner != str(system_identifier):
        problems.append(f"{where} belongs to cluster {owner}, not to this one ({system_identifier}); "
                        "give this cluster its own archive prefix (wal_archive_prefix)")
    lock = lock_problem(archive.s3, config["bucket"], config.get("recovery_window_days", 0),
                        config.get("backup_max_age_h", 0), config.get("full_every_days", 0))
    if lock:
        problems.append(lock)
    if config.get("sse") == "aws:kms":
        try:
            kms = kms or client(config, "kms")
            kms.generate_data_key(KeyId=config["kms_key_id"], KeySpec="AES_256")
        except ClientError as exc:
            problems.append(f"the KMS key {config['kms_key_id']} cannot be used ({exc.response['Error']['Code']}); "
                            "check wal_archive_kms_key_id and the credentials' kms:GenerateDataKey permission")
    return problems


def lock_problem(s3, bucket, window_days, max_age_h=0, full_every_days=0):
    """A one-line problem unless S3 Object Lock locks every new version in `bucket` in COMPLIANCE mode for as long
    as a restore may need it (then no key, however privileged, can delete or shorten it): the recovery window, plus
    the age the base backup a restore to its first moment starts from may have: up to `max_age_h` (a backup is
    due), and with incremental backups the `full_every_days` their chain may span before the next full one."""
    from botocore.exceptions import ClientError
    try:
        lock = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ObjectLockConfigurationNotFoundError":
            return (f"cannot read bucket {bucket}'s Object Lock configuration ({exc.response['Error']['Code']}); "
                    "the archive keys need s3:GetBucketObjectLockConfiguration")
        lock = {}
    retention = lock.get("Rule", {}).get("DefaultRetention", {})
    days = retention.get("Days") or 365 * retention.get("Years", 0)
    backup_age_days = max_age_h / 24 + full_every_days
    if (lock.get("ObjectLockEnabled") == "Enabled" and retention.get("Mode") == "COMPLIANCE"
            and days >= window_days + backup_age_days):
        return None
    has = (f"a default {retention.get('Mode')} lock of {days} days" if retention else
           "Object Lock without a default retention" if lock.get("ObjectLockEnabled") == "Enabled" else "no Object Lock")
    return (f"bucket {bucket} has {has}; it needs a default COMPLIANCE lock of at least {window_days + backup_age_days:.1f} "
            f"days: the recovery window ({window_days:g} days, backup_retention_days) and the age of the base backup a "
            f"restore to its start may need ({backup_age_days:.1f} days: backup_max_age_h {max_age_h:g} + "
            f"backup_full_every_days {full_every_days:g}), so no key can delete what a restore needs (docs/backups.md)")


class Uploader(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Keeps one boto3 client warm; `push` hands each segment over a Unix socket and waits for the verdict."""

    daemon_threads = True

    def __init__(self, path, archive):
        self.archive = archive
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, Handler)
        os.chmod(path, 0o600)


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        request = json.loads(self.rfile.readline())
        started = time.monotonic()
        try:
            verdict = self.server.archive.push(request["path"], request["name"])
            reply = f"ok {verdict}"
        except Exception as exc:  # the verdict goes back to archive_command, which logs it
            reply = f"error {exc}".replace("\n", " ")
        print(f"{request['name']}: {reply} ({time.monotonic() - started:.2f}s)", flush=True)
        self.wfile.write(reply.encode() + b"\n")


class Prefetch:
    """Segments fetched ahead of restore_command, `depth` at a time in parallel (pgBackRest's asynchronous
    archive-get), so replay does not wait for one process start and one S3 round trip per segment.

    The spool is a directory in the data directory's pg_wal: a spooled segment reaches PostgreSQL by a rename, and
    pg_basebackup copies nothing under pg_wal. It holds only the `depth` segments after the one restore_command
    asked for last, each written under a temporary name and renamed once its stored checksum matched (Archive.fetch).
    One prefetcher owns the spool while it holds its lock, and empties it when it starts and when it leaves: at
    once when PostgreSQL's startup process (the recovery) exits, so no prefetcher is left in the cluster's service
    when a failed start returns; when recovery ended (no recovery.signal or standby.signal); or when nothing was
    asked for in PREFETCH_IDLE_S. A segment is served only while its prefetcher runs, so none outlives the restore
    that fetched it."""

    def __init__(self, data_directory, depth):
        self.data_directory = os.path.abspath(data_directory)
        self.spool = os.path.join(self.data_directory, "pg_wal", PREFETCH_DIR)
        self.depth = depth
        self.wanted_file = os.path.join(self.spool, "wanted")

    def serve(self, name, dest, spawn, wait_s=PREFETCH_WAIT_S, sleep=time.sleep):
        """restore_command's side: True when `name` came from the spool to `dest`; else the caller fetches it. Says
        what is wanted next and starts a prefetcher (`spawn`) when none runs."""
        os.makedirs(self.spool, mode=0o700, exist_ok=True)
        _write_atomically(self.wanted_file, name.encode())
        if not self._owned():
            spawn()
            return False
        path = os.path.join(self.spool, name)
        deadline = time.monotonic() + wait_s
        while os.path.exists(path + ".fetching") and time.monotonic() < deadline and self._owned():
            sleep(0.02)  # already on its way: waiting beats fetching it twice
        if not self._owned():  # its prefetcher left (and emptied the spool, or is about to)
            return False
        try:
            os.rename(path, dest)
            return True
        except FileNotFoundError:
            return False

    def _owned(self):
        """True while a prefetcher holds the spool's lock."""
        import fcntl
        try:
            fd = os.open(os.path.join(self.spool, "lock"), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def run(self, archive, recovery_pid, idle_s=PREFETCH_IDLE_S, poll_s=0.01):
        """The prefetcher: until process `recovery_pid` exits, recovery ends or nobody asks, keep the `depth` segments
        after the wanted one in the spool. A segment absent or unreadable is not tried again until something later
        is wanted (restore_command then fetches it itself and says why)."""
        import fcntl
        import select
        from concurrent.futures import ThreadPoolExecutor
        try:
            recovery = os.pidfd_open(recovery_pid)  # readable once that process has exited
        except ProcessLookupError:
            return "the recovery had ended; nothing fetched ahead"
        os.makedirs(self.spool, mode=0o700, exist_ok=True)
        lock = os.open(os.path.join(self.spool, "lock"), os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            os.close(recovery)
            return "another prefetcher owns the spool"
        pool = ThreadPoolExecutor(self.depth)
        in_flight, given_up, spooled, wanted = {}, set(), set(), None
        try:
            archive.s3  # one client for every thread, made before them
            self._clear(keep=())
            while True:
                asked = self._wanted()
                if not self._recovering():
                    why = "recovery ended"
                    break
                if not asked or time.time() - asked[1] >= idle_s:
                    why = f"nothing asked for in {idle_s} s"
                    break
                if asked[0] != wanted:
                    wanted, given_up = asked[0], set()
                window = prefetch_window(wanted, self.depth)
                self._clear(keep={wanted, *window, *in_flight})
                for name, future in list(in_flight.items()):
                    if future.done():
                        del in_flight[name]
                        if future.exception() is not None or not future.result():
                            given_up.add(name)
                        else:  # once: restore_command may have taken it before `wanted` said so
                            spooled.add(name)
                for name in window:
                    path = os.path.join(self.spool, name)
                    if name not in in_flight and name not in given_up | spooled and not os.path.exists(path):
                        open(f"{path}.fetching", "wb").close()  # on its way from now: restore_command waits for it
                        in_flight[name] = pool.submit(self._fetch, archive, name)
                if select.select([recovery], [], [], poll_s)[0]:
                    why = "the recovery process exited"
                    break
        finally:
            # Renamed first: a download still running then finds no spool to write into, and is not waited for.
            pool.shutdown(wait=False, cancel_futures=True)
            gone = f"{self.spool}.gone.{os.getpid()}"
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.spool, gone)
            shutil.rmtree(gone, ignore_errors=True)
            os.close(lock)
            os.close(recovery)
        return f"{why}; {len(spooled)} segments fetched ahead, spool removed"

    def _fetch(self, archive, name):
        """archive.fetch() into the spool; its .fetching mark goes either way."""
        path = os.path.join(self.spool, name)
        try:
            return archive.fetch(name, path)
        finally:
            with contextlib.suppress(FileNotFoundError):  # gone once fetch() renamed it into place
                os.unlink(f"{path}.fetching")

    def _recovering(self):
        return any(os.path.exists(os.path.join(self.data_directory, f)) for f in ("recovery.signal", "standby.signal"))

    def _wanted(self):
        """(the segment restore_command asked for last, when it asked), or None."""
        try:
            with open(self.wanted_file) as f:
                name, asked_at = f.read().strip(), os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return (name, asked_at) if SEGMENT.match(name) else None

    def _clear(self, keep):
        """Remove every spooled segment (finished or not) whose name is not in `keep`."""
        for entry in os.listdir(self.spool):
            if SEGMENT.match(entry.removesuffix(".fetching")) and entry.removesuffix(".fetching") not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.spool, entry))


def prefetch_window(wanted, depth):
    """The `depth` segments after `wanted`, on its timeline."""
    start = segment_position(wanted)
    return [segment_name(timeline_of(wanted), start + i * WAL_SEGMENT_BYTES) for i in range(1, depth + 1)]


def _write_atomically(path, data):
    partial = f"{path}.{os.getpid()}"
    with open(partial, "wb") as f:
        f.write(data)
    os.rename(partial, path)


def handoff(socket_path, path, name):
    """The uploader's verdict for one segment: (ok, message); None when no uploader is listening."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(socket_path)
    except OSError:
        return None
    client.settimeout(HANDOFF_TIMEOUT_S)
    with client:
        client.sendall(json.dumps({"path": os.path.abspath(path), "name": name}).encode() + b"\n")
        reply = b""
        try:
            while not reply.endswith(b"\n"):
                chunk = client.recv(4096)
                if not chunk:  # the uploader died mid-upload: never success
                    return False, "the uploader closed the connection before confirming the upload"
                reply += chunk
        except socket.timeout:
            return False, f"no verdict from the uploader within {HANDOFF_TIMEOUT_S}s"
    verdict, _, message = reply.decode().strip().partition(" ")
    return verdict == "ok", message


def record_push(outcome):
    """The archive's freshness for monitoring: when archive_command last succeeded, and last failed."""
    textfile.write(f"wal_archive_{outcome}", [
        (f"mcp_wal_archive_last_{outcome}_timestamp_seconds", f"When archive_command last reported {outcome}.",
         time.time())])


def recovery_kind(directory="."):
    """"standby" where the data directory (restore_command's working directory) holds standby.signal, else
    "restore" (recovery.signal: a point-in-time restore, the drill's, a replica's rebuild from a backup)."""
    return "standby" if os.path.exists(os.path.join(directory, "standby.signal")) else "restore"


def served_ahead(config, name, dest, program):
    """restore_command: True when the prefetcher had `name` ready (config's `prefetch` segments ahead; 0: off); it
    is started (`program` prefetch, in its own session) when none runs. Any trouble here only means fetching it
    the usual way."""
    depth = int(config.get("prefetch") or 0)
    if not depth or not SEGMENT.match(name):
        return False

    recovery = recovery_process()
    if recovery is None:
        return False

    def spawn():
        subprocess.Popen([program, "prefetch", str(recovery)], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, close_fds=True)
    try:
        return Prefetch(".", depth).serve(name, dest, spawn)
    except OSError as exc:
        print(f"wal_archive fetch {name}: prefetching failed ({exc}); fetching it directly", file=sys.stderr)
        return False


def recovery_process(proc="/proc"):
    """The pid of PostgreSQL's startup process, which runs restore_command through a shell: the nearest ancestor
    named postgres (MCP_WAL_PREFETCH_WATCH_PID names another, for a benchmark); None when there is none."""
    if os.environ.get("MCP_WAL_PREFETCH_WATCH_PID"):
        return int(os.environ["MCP_WAL_PREFETCH_WATCH_PID"])
    pid = os.getppid()
    for _ in range(4):  # restore_command <- sh <- startup process
        try:
            with open(f"{proc}/{pid}/stat") as f:
                stat = f.read()
        except FileNotFoundError:
            return None
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if name == "postgres":
            return pid
        pid = int(fields[1])  # the parent's
    return None


def fetch_failed(name, exc, kind):
    """The exit status for restore_command after `name` could not be fetched, said in one line: on a standby 1,
    so it keeps streaming from the primary and Patroni does not restart it in a loop, counted for monitoring; in a
    restore ABORT_RECOVERY, so recovery stops instead of ending early as if the archive ended there."""
    reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    if kind == "standby":
        print(f"wal_archive fetch {name}: {reason}; this standby goes on streaming from the primary", file=sys.stderr)
        textfile.write("wal_restore", [
            ("mcp_wal_restore_last_failure_timestamp_seconds",
             "When restore_command on this standby last failed to fetch an archived segment (not its absence).",
             time.time())])
        return 1
    print(f"wal_archive fetch {name}: {reason}; RECOVERY ABORTED: this restore stops here rather than end early "
          "and promote without the WAL after it; fix the archive or its access and start the restore again",
          file=sys.stderr)
    return ABORT_RECOVERY


def main(argv):
    command, args = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    usage = {"push": 2, "fetch": 2, "prefetch": 1, "serve": 0, "check": 0, "seal": 1}
    if usage.get(command) != len(args):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    config = load_config(os.environ.get("MCP_WAL_ARCHIVE_CONFIG", CONFIG))
    try:
        if command == "push":
            try:
                verdict = handoff(config["socket"], *args)
                if verdict is None:  # no uploader: do it here, slower but just as safe
                    ok, message = True, Archive(config).push(*args)
                else:
                    ok, message = verdict
                if not ok:
                    raise ArchiveError(message)
            except Exception:
                record_push("failure")
                raise
            record_push("success")
            return 0
        if command == "fetch":
            kind = recovery_kind()
            if served_ahead(config, *args, program=argv[0]):
                return 0
            try:
                return 0 if Archive(config).fetch_patiently(*args, FETCH_PAUSES_S[kind]) else 1
            except Exception as exc:  # noqa: BLE001 (after its tries, any failure is the same kind of answer)
                return fetch_failed(args[0], exc, kind)
        if command == "serve":
            Uploader(config["socket"], Archive(config)).serve_forever()
        if command == "prefetch":
            print(f"wal_archive prefetch: {Prefetch('.', config['prefetch']).run(Archive(config), int(args[0]))}",
                  file=sys.stderr, flush=True)
            os._exit(0)  # without waiting for a download that no one will read
        if command == "seal":
            parent, last, backfilled, missing = Archive(config).seal(int(args[0]), os.path.join(config["data_directory"], "pg_wal"))
            print(f"timeline {parent} ends in {last}; archived now: {', '.join(backfilled) or 'none'}; "
                  f"missing: {', '.join(missing) or 'none'}")
            return 1 if missing else 0
        if command == "check":
            problems = preflight(config, time.time(), Archive(config).system_identifier())
            for problem in problems:
                print(f"wal_archive check: {problem}", file=sys.stderr)
            return 1 if problems else 0
    except ArchiveError as exc:
        print(f"wal_archive {command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # S3 unreachable, credentials refused: never success, the WAL stays
        print(f"wal_archive {command}: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
