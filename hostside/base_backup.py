#!/usr/bin/python3
"""Verified base backups to S3, and restores from them.

    base_backup.py run --work-dir DIR [--full-every-days N]
                              one backup (mcp-base-backup.service): pg_basebackup -> pg_verifybackup -> pack ->
                              multipart upload with checksums and SSE -> completion record. Incremental on top of
                              the newest backup (--incremental, PostgreSQL 17's WAL summaries) while the full backup
                              its chain starts with began less than N days ago, and then verified as its chain
                              restores: pg_combinebackup into DIR onto the verified copy of the chain the last run
                              kept there (else onto every link from S3), pg_verifybackup
    base_backup.py list       the backups in the archive, oldest first (JSON lines)
    base_backup.py retain --window-days N --max-delete-percent P
                              delete what a restore to any time in the last N days does not need (mcp-backup-
                              retention.service, with credentials that may delete); a run that would delete more
                              than P% of the prefix's object versions deletes nothing and fails
    base_backup.py restore DATADIR [--target-time T | --target-lsn L | --target-xid X | --target-name N]
                              the newest verified backup that ends before the target (an incremental one: its
                              whole chain, combined with pg_combinebackup), unpacked, verified and set up to replay
                              WAL from the archive to the target and then stop (recovery.signal)
    base_backup.py replayed DATADIR
                              after a restore without a target, promoted: did replay reach the archive's last
                              segment? (a gap ends recovery early as if the archive ended there)
    base_backup.py restore --standby DATADIR
                              rebuild this host's replica: the newest verified backup, unpacked and verified, set
                              up as a standby (standby.signal); Patroni's first replica creation method, which
                              starts it following the leader

The completion records live in the bucket, where every database host's keys may put: retention and restores
trust a record only once it agrees with what S3 itself says about the backup's objects (one version each, S3's
own dates and sizes) and with the backup's manifest, and an incremental backup only while every link of its chain
is trusted (`Backups.vet`).

Runs only where `pg_is_in_recovery()` is false: on a standby `run` says so and exits 0. Settings come from the
WAL archiver's configuration (/etc/mcp-portal/wal-archive.json): same bucket, prefix and keys.
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time

from hostside import layout, textfile, wal_archive

RECORD = "backup.json"
ARCHIVE = "base.tar.gz"
MANIFEST = "backup_manifest"
# A record is put seconds after its backup finished, and S3 dates the put itself: a record whose finish time is
# further than this from S3's date was not written by a backup.
RECORD_CLOCK_SLACK_S = 900


def say(message):
    print(message, flush=True)  # the journal, via systemd


def psql(sql):
    return psql_db("postgres", sql)


def psql_db(database, sql):
    """A query on this host's cluster over the local socket, as postgres."""
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*as_postgres, "psql", "-XtAq", "-d", database, "-c", sql], check=True,
                          capture_output=True, text=True).stdout.strip()


def on_standby(what):
    """True (and says so) where `what` has nothing to do: it runs on the leader only (Patroni moves it; the timers
    are on every database host), and this host's PostgreSQL is a standby or is not running."""
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if subprocess.run([*as_postgres, "pg_isready", "-q"]).returncode != 0:
        say(f"PostgreSQL does not accept connections here: {what} run on the leader only; nothing to do")
        return True
    if psql("select pg_is_in_recovery()") == "t":
        say(f"this host is a standby (pg_is_in_recovery() is true): {what} run on the leader only; nothing to do")
        return True
    return False


class HashingWriter:
    """A file object that hashes what passes through it."""

    def __init__(self, raw):
        self.raw, self.sha256, self.size = raw, hashlib.sha256(), 0

    def write(self, data):
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self):
        self.raw.flush()


def wal_range(manifest_path):
    """(timeline, start LSN, end LSN) of the WAL a backup needs, from its backup_manifest."""
    with open(manifest_path) as f:
        return wal_range_of(json.load(f))


def wal_range_of(manifest):
    ranges = manifest["WAL-Ranges"]
    return ranges[-1]["Timeline"], ranges[0]["Start-LSN"], ranges[-1]["End-LSN"]


class Distrust(Exception):
    """Why a completion record does not count."""


class RetentionRefused(wal_archive.ArchiveError):
    """A retention run that would delete more than its cap: nothing was deleted."""


SEGMENT_BYTES = 16 * 2**20
SEGMENTS_PER_XLOGID = 2**32 // SEGMENT_BYTES


def segment_number(lsn):
    """The WAL segment (log id * segments per id + segment) holding `lsn`, as WAL file names number them."""
    return lsn_value(lsn) // SEGMENT_BYTES


def file_segment(name):
    """The segment number a WAL file name holds (log id * segments per id + segment), as segment_number counts."""
    return int(name[8:16], 16) * SEGMENTS_PER_XLOGID + int(name[16:24], 16)


def lsn_value(lsn):
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


class Backups:
    def __init__(self, config):
        self.archive = wal_archive.Archive(config)
        self.config = config
        self.bin = config["bin_directory"]

    def key(self, backup_id, name):
        return f"{self.archive.prefix}/backups/{backup_id}/{name}"

    def records(self):
        """Completion records, oldest first: only backups that finished (upload, verify, record) count."""
        folder, s3 = f"{self.archive.prefix}/backups/", self.archive.s3
        records = [json.load(s3.get_object(Bucket=self.archive.bucket, Key=key)["Body"]) for key in self.keys()
                   if key.startswith(folder) and key.endswith("/" + RECORD)]
        return sorted(records, key=lambda r: r["id"])

    def versions(self):
        """Every version under the prefix, by key, newest first (delete markers included, as `"DeleteMarker": True`)."""
        listed = {}
        pages = self.archive.s3.get_paginator("list_object_versions").paginate(Bucket=self.archive.bucket,
                                                                               Prefix=self.archive.prefix + "/")
        for page in pages:
            for kind, marker in (("Versions", False), ("DeleteMarkers", True)):
                for version in page.get(kind, []):
                    listed.setdefault(version["Key"], []).append(dict(version, DeleteMarker=marker))
        for entries in listed.values():  # S3 dates to the second: IsLatest says which is current
            entries.sort(key=lambda v: (not v.get("IsLatest"), -v["LastModified"].timestamp()))
        return listed

    def vet(self, versions):
        """(trusted records, [(backup id, why refused)]), oldest first. Any database host's keys may put a record,
        so a record counts only where S3's own view of the backup agrees with it."""
        trusted, refused = [], []
        records = [k for k, entries in versions.items() if k.startswith(f"{self.archive.prefix}/backups/")
                   and k.endswith("/" + RECORD) and not entries[0]["DeleteMarker"]]  # deleted: not a record
        if not records:  # nothing to vet (another environment's empty prefix: no cluster of ours to ask either)
            return trusted, refused
        owner = self.archive.owner() or self.archive.system_identifier()
        for key in sorted(records):
            backup_id = key.split("/")[-2]
            try:
                trusted.append(self._vetted(backup_id, versions, owner))
            except Distrust as exc:
                refused.append((backup_id, str(exc)))
        trusted, broken = whole_chains(trusted)
        return trusted, sorted(refused + broken)

    def _vetted(self, backup_id, versions, owner):
        objects = {}
        for name in (RECORD, ARCHIVE, MANIFEST):
            entries = versions.get(self.key(backup_id, name), [])
            stored = [v for v in entries if not v["DeleteMarker"]]
            if len(stored) != 1 or entries[0]["DeleteMarker"]:
                raise Distrust(f"{name} has {len(stored)} versions (one, never overwritten, is what a backup writes)")
            objects[name] = stored[0]
        s3, bucket = self.archive.s3, self.archive.bucket
        record = json.load(s3.get_object(Bucket=bucket, Key=self.key(backup_id, RECORD))["Body"])
        archive_sha256 = s3.head_object(Bucket=bucket, Key=self.key(backup_id, ARCHIVE))["Metadata"].get("sha256")
        manifest = s3.get_object(Bucket=bucket, Key=self.key(backup_id, MANIFEST))["Body"].read()
        problems = record_problems(record, backup_id, owner, objects[RECORD], objects[ARCHIVE], archive_sha256, manifest)
        if problems:
            raise Distrust("; ".join(problems))
        return record

    def conflicting(self, versions, first_segment):
        """The keys a restore from segment `first_segment` on reads (history files, WAL from there) that hold
        versions with different content: every put is conditional, so only a writer that is not the tier's
        overwrites, and a restore must not guess which version is true."""
        conflicts = []
        for key, entries in versions.items():
            name = key.rsplit("/", 1)[1]
            needed = wal_archive.HISTORY.match(name) or (
                key.startswith(f"{self.archive.prefix}/wal/") and wal_archive.WAL_FILE.match(name)
                and file_segment(name) >= first_segment)
            stored = [v for v in entries if not v["DeleteMarker"]]
            if needed and len({v["ETag"] for v in stored}) > 1:  # ETags differ: compare the content checksums
                digests = {self.archive.s3.head_object(Bucket=self.archive.bucket, Key=key, VersionId=v["VersionId"])
                           ["Metadata"].get("sha256") for v in stored}
                if len(digests) > 1 or None in digests:
                    conflicts.append(key)
        return sorted(conflicts)

    def run(self, work_root, full_every_s=0.0):
        kept = KeptCopy(work_root)
        if on_standby("base backups"):
            kept.discard()  # no backup here builds on it: a copy of the database less on this disk
            return None
        self.archive.check_owner()
        started = time.time()
        backup_id = datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        work = os.path.join(work_root, backup_id)
        data = os.path.join(work, "data")
        os.makedirs(work, mode=0o700)
        try:
            parent = None
            if full_every_s > 0:  # every record vetted: a broken chain is never built on
                trusted, _ = self.vet(self.versions())
                parent = incremental_parent(trusted, started, full_every_s,
                                            int(psql(f"select {wal_archive.CURRENT_TIMELINE_SQL}")))
            kept.of(parent and parent["id"])  # a copy of any other backup goes before this one starts
            links = self.taken(backup_id, data, parent and self.links(parent, trusted), work)
            if not links:
                kept.discard()
            copied = time.time()
            # Every transaction id from here on was assigned after the backup ended, so commits after it: what
            # makes this backup a start for a restore to such an xid.
            next_xid = int(psql("select pg_snapshot_xmax(pg_current_snapshot())"))
            say(f"{backup_id}: pg_verifybackup")
            subprocess.run([f"{self.bin}/pg_verifybackup", data], check=True)
            restores_to = data
            if links:  # what a restore does with it: its chain combined, verified
                restores_to = self.verified_chain(links, backup_id, data, os.path.join(work, "chain"), kept)
            verified = time.time()
            timeline, start_lsn, end_lsn = wal_range(os.path.join(data, "backup_manifest"))
            packed = os.path.join(work, ARCHIVE)
            with open(packed, "wb") as raw:
                hashing = HashingWriter(raw)
                with tarfile.open(fileobj=hashing, mode="w:gz", compresslevel=1) as tar:
                    tar.add(data, arcname="data")
            say(f"{backup_id}: packed {hashing.size / 2**20:.1f} MiB; uploading")
            upload(self.archive, packed, self.key(backup_id, ARCHIVE), hashing.sha256.hexdigest())
            with open(os.path.join(data, "backup_manifest"), "rb") as f:
                manifest = f.read()
            self.archive.put_new(self.key(backup_id, MANIFEST), manifest)
            finished = time.time()
            record = {
                "id": backup_id, "system_identifier": self.archive.system_identifier(), "timeline": timeline,
                "start_lsn": start_lsn, "end_lsn": end_lsn, "started_at": started, "finished_at": finished,
                "size_bytes": hashing.size, "sha256": hashing.sha256.hexdigest(), "verified": True,
                "manifest_sha256": hashlib.sha256(manifest).hexdigest(), "next_xid": next_xid,
                "chain": [r["id"] for r in links] + [backup_id],
                "durations_s": {"pg_basebackup": round(copied - started, 1), "pg_verifybackup": round(verified - copied, 1),
                                "pack_and_upload": round(finished - verified, 1)},
                "server_version": psql("show server_version"),
            }
            body = json.dumps(record, indent=1).encode()
            self.archive.put_new(self.key(backup_id, RECORD), body)
            if full_every_s > 0:  # the next backup may be incremental on this one
                kept.keep(backup_id, restores_to)
            kind = f"incremental on {links[-1]['id']}, chain of {len(links) + 1}" if links else "full"
            say(f"{backup_id}: done in {finished - started:.1f} s ({kind}), WAL {start_lsn}..{end_lsn} on timeline "
                f"{timeline}")
            return record
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def taken(self, backup_id, data, links, work):
        """pg_basebackup into `data`: incremental on the last of `links` (trusted records, full first) when there
        are any, else full, and full too when the incremental one fails (the WAL summaries since its parent's start
        are gone, or began after it). The links it was taken on ([] for a full backup)."""
        command = [f"{self.bin}/pg_basebackup", "-D", data, "-Fp", "-X", "stream", "-c", "fast",
                   "--manifest-checksums=SHA256", "-l", f"mcp-portal {backup_id}", "-h", layout.SOCKET_DIR]
        if links:
            parent = links[-1]
            manifest = os.path.join(work, "parent_manifest")
            self.archive.s3.download_file(self.archive.bucket, self.key(parent["id"], MANIFEST), manifest)
            if sha256_of(manifest) != parent["manifest_sha256"]:
                raise wal_archive.ArchiveError(f"backup {parent['id']}'s manifest does not match its record")
            say(f"{backup_id}: pg_basebackup --incremental on {parent['id']} (its chain: {len(links)} backups)")
            if subprocess.run(command + [f"--incremental={manifest}"]).returncode == 0:
                return links
            say(f"{backup_id}: the incremental backup failed (above): a full one instead")
            shutil.rmtree(data, ignore_errors=True)
        say(f"{backup_id}: pg_basebackup (full, plain, WAL streamed, fast checkpoint, SHA-256 manifest)")
        subprocess.run(command, check=True)
        return []

    def verified_chain(self, links, backup_id, data, work, kept):
        """The data directory a restore of this backup (`data`, incremental on `links`) gives, combined and verified
        under `work`: onto the copy of links[-1] the last run kept (KeptCopy), else from every link in S3."""
        parent = links[-1]["id"]
        kept_data = kept.of(parent)
        if kept_data:
            reads = kept_reads(data, kept_data)
            say(f"{backup_id}: its chain up to {parent} from the copy the last backup kept ({sum(reads.values())} of "
                "its files, those this backup rebuilds, checked against its manifest first)")
            changed = kept_changes(kept_data, reads)
            for problem in changed:
                say(f"{backup_id}: the kept copy's {problem}")
            if not changed:
                try:
                    return self.assemble([links[-1], {"id": backup_id}], work,
                                         here={parent: kept_data, backup_id: data})
                except subprocess.CalledProcessError:
                    pass  # what failed is above
            say(f"{backup_id}: the kept copy of {parent} did not combine or verify (above): dropped, every link "
                "from S3 instead")
            kept.discard()
            shutil.rmtree(work, ignore_errors=True)
        return self.assemble(links + [{"id": backup_id}], work, here={backup_id: data})

    def links(self, record, trusted):
        """The trusted records a restore of `record` combines, full backup first (vet() keeps only whole chains)."""
        by_id = {r["id"]: r for r in trusted}
        return [by_id[backup_id] for backup_id in chain_ids(record)]

    def unpacked(self, record, into):
        """Backup `record`'s archive, downloaded (checked against its recorded sha256) and unpacked: its data
        directory, `into`/data."""
        os.makedirs(into, mode=0o700)
        packed = os.path.join(into, ARCHIVE)
        download(self.archive, self.key(record["id"], ARCHIVE), packed, record["sha256"])
        with tarfile.open(packed, "r:gz") as tar:
            tar.extractall(into, filter="data")
        os.unlink(packed)
        return os.path.join(into, "data")

    def assemble(self, links, work, here=None):
        """The data directory `links` (records, full backup first) restore to, verified, under `work`: a full
        backup's own, or pg_combinebackup's of the chain. `here`: {backup id: data directory already on this host}."""
        here = here or {}
        os.makedirs(work, mode=0o700, exist_ok=True)
        parts = [here.get(r["id"]) or self.unpacked(r, os.path.join(work, r["id"])) for r in links]
        if len(parts) == 1:
            data = parts[0]
        else:
            data = os.path.join(work, "combined")
            say(f"pg_combinebackup of {len(parts)} backups ({links[0]['id']} .. {links[-1]['id']})")
            # In-kernel copies of the files it copies whole, whose manifest checksums it keeps (and the
            # pg_verifybackup below checks against their bytes as copied).
            subprocess.run([f"{self.bin}/pg_combinebackup", "--manifest-checksums=SHA256", "--copy-file-range", "-o",
                            data, *parts], check=True)
            for part in parts:
                if part not in here.values():  # a link's copy goes as soon as it is combined: disk for one more
                    shutil.rmtree(os.path.dirname(part), ignore_errors=True)
        say(f"pg_verifybackup on the {'combined chain' if len(parts) > 1 else 'restored copy'}")
        subprocess.run([f"{self.bin}/pg_verifybackup", data], check=True)
        return data

    def retain(self, window_s, max_delete_percent, now=None):
        """Delete what a point-in-time restore to any moment of the last `window_s` seconds does not need: the
        backups before the newest one that finished before the window opened (kept: it is where such a restore
        starts), and the WAL before the oldest kept backup's start. Never the newest trusted backup, never a
        .history file, never a refused record's objects, never a version whose lock has not expired. Deletes every
        version (the bucket is versioned); more than `max_delete_percent` of the prefix's versions at once:
        nothing, RetentionRefused. Returns (deleted keys, refused records, versions still locked)."""
        now = now or time.time()
        opens = now - window_s
        versions = self.versions()
        trusted, refused = self.vet(versions)
        for backup_id, why in refused:
            say(f"retention: REFUSED backup {backup_id}: {why}; it does not count and its objects are kept")
        if not trusted:
            say("no trusted backup yet: nothing is deleted")
            return [], refused, 0
        oldest_kept, doomed = retention_plan(trusted, [backup_id for backup_id, _ in refused], versions, opens,
                                             self.archive.prefix)
        unlocked, locked = self.unlocked([v for key in doomed for v in versions[key]], now)
        total = sum(len(entries) for entries in versions.values())
        if len(unlocked) > total * max_delete_percent / 100:
            raise RetentionRefused(
                f"retention would delete {len(unlocked)} of the prefix's {total} object versions, more than "
                f"{max_delete_percent:g}% (backup_retention_max_delete_percent): nothing deleted; if the backups "
                f"listed by `mcp-base-backup list` say this is right, run once with --max-delete-percent 100")
        say(f"retention: window {window_s / 86400:g} days, oldest kept backup {oldest_kept['id']}; deleting "
            f"{len(unlocked)} object versions ({len({v['Key'] for v in unlocked})} keys); {locked} versions still "
            "locked are kept")
        self.delete(unlocked)
        return sorted({v["Key"] for v in unlocked}), refused, locked

    def unlocked(self, versions, now):
        """(the versions whose Object Lock has expired, how many are still locked): S3 refuses to delete a locked
        version, so asking first keeps one run's answer whole. A key's delete markers go only with its last
        version: removing the marker over a locked version would bring a deleted object back."""
        free, locked, held = [], 0, set()
        for version in versions:
            if not version["DeleteMarker"]:
                head = self.archive.s3.head_object(Bucket=self.archive.bucket, Key=version["Key"],
                                                   VersionId=version["VersionId"])
                until = head.get("ObjectLockRetainUntilDate")
                if head.get("ObjectLockLegalHoldStatus") == "ON" or (until and until.timestamp() > now):
                    locked += 1
                    held.add(version["Key"])
                    continue
            free.append(version)
        return [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in free
                if not (v["DeleteMarker"] and v["Key"] in held)], locked

    def delete(self, versions):
        s3 = self.archive.s3
        for start in range(0, len(versions), 1000):
            answer = s3.delete_objects(Bucket=self.archive.bucket,
                                       Delete={"Objects": versions[start:start + 1000], "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise wal_archive.ArchiveError(f"S3 refused to delete {len(answer['Errors'])} versions, the first "
                                               f"{first['Key']} ({first['Code']}: {first.get('Message', '')})")

    def keys(self):
        """Every key under the cluster's prefix."""
        pages = self.archive.s3.get_paginator("list_objects_v2").paginate(Bucket=self.archive.bucket,
                                                                          Prefix=self.archive.prefix + "/")
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def choose(self, target_time=None, target_lsn=None, target_xid=None):
        """The newest trusted backup of the cluster the prefix belongs to that ends before the target (for an xid:
        whose next transaction id at its end is at most the target's, so the target commits after it; the prefix
        may be another environment's: a staging rebuild restores prod's backups on a host of its own), as the
        records a restore combines (links(): itself alone for a full backup). Refused when any key in the prefix
        holds versions with different content."""
        versions = self.versions()
        candidates, refused = self.vet(versions)
        trusted = list(candidates)
        for backup_id, why in refused:
            say(f"backup {backup_id} is not used: {why}")
        problem = target_problem(candidates, archived_segments(versions, self.archive.prefix), target_time, target_lsn)
        if problem:
            raise wal_archive.ArchiveError(problem)
        if target_time is not None:
            candidates = [r for r in candidates if r["finished_at"] < target_time]
        if target_lsn is not None:
            candidates = [r for r in candidates if lsn_value(r["end_lsn"]) <= lsn_value(target_lsn)]
        if target_xid is not None:  # a record without next_xid cannot tell: not a candidate
            candidates = [r for r in candidates if isinstance(r.get("next_xid"), int) and r["next_xid"] <= int(target_xid)]
        if not candidates:
            raise wal_archive.ArchiveError("no verified backup of this cluster ends before the target")
        conflicts = self.conflicting(versions, segment_number(candidates[-1]["start_lsn"]))
        if conflicts:
            raise wal_archive.ArchiveError(
                f"REFUSED: s3://{self.archive.bucket}/{conflicts[0]} (and {len(conflicts) - 1} more) holds versions "
                f"with different content, and a restore from backup {candidates[-1]['id']} reads it; the tier never "
                "overwrites, so something else wrote into the archive: investigate before restoring (docs/backups.md)")
        return self.links(candidates[-1], trusted)

    def restore_point(self, name, scratch):
        """The LSN of restore point `name`: pg_waldump over the archived segments, newest first, down to the oldest
        trusted backup's start (a restore point is in the WAL only, and a restore must start before it)."""
        trusted, _ = self.vet(self.versions())
        if not trusted:
            raise wal_archive.ArchiveError("no verified backup of this cluster: nothing to restore from")
        oldest = min(segment_number(r["start_lsn"]) for r in trusted)
        names = {key.rsplit("/", 1)[1] for key in self.keys() if key.startswith(f"{self.archive.prefix}/wal/")}
        segments = sorted((n for n in names if wal_archive.SEGMENT.match(n)
                           and file_segment(n) >= oldest),
                          key=lambda n: (n[8:], n[:8]), reverse=True)
        os.makedirs(scratch, mode=0o700)
        try:
            for segment in segments:
                path = os.path.join(scratch, segment)
                self.archive.fetch(segment, path)
                dumped = subprocess.run([f"{self.bin}/pg_waldump", "--rmgr=XLOG", path], capture_output=True,
                                        text=True).stdout  # it exits 1 at the segment's end: the records are out
                os.unlink(path)
                found = restore_point_in(dumped, name)
                if found:
                    return found
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        raise wal_archive.ArchiveError(
            f"restore point {name!r} is in none of the {len(segments)} archived segments since the oldest backup's "
            "start: check the name (pg_create_restore_point), and that its segment is archived (archive_timeout, "
            "or pg_switch_wal() on the primary)")

    def restore(self, datadir, targets, standby=False):
        if os.path.exists(datadir) and os.listdir(datadir):
            raise wal_archive.ArchiveError(f"{datadir} is not empty: restore into an empty directory")
        target_time = targets.get("recovery_target_time")
        epoch = datetime.datetime.fromisoformat(target_time).timestamp() if target_time else None
        parent = os.path.dirname(os.path.abspath(datadir))
        target_lsn = targets.get("recovery_target_lsn")
        if targets.get("recovery_target_name"):
            target_lsn = self.restore_point(targets["recovery_target_name"], os.path.join(parent, ".restore-point"))
            say(f"restore point {targets['recovery_target_name']} is at {target_lsn}")
        links = self.choose(epoch, target_lsn, targets.get("recovery_target_xid"))
        record = links[-1]
        chain = f", incremental: its chain is {' '.join(r['id'] for r in links)}" if len(links) > 1 else ""
        say(f"restoring backup {record['id']} (WAL {record['start_lsn']}..{record['end_lsn']}{chain})")
        work = os.path.join(parent, f".{record['id']}.restore")
        try:  # everything happens beside `datadir`; it appears only once the copy is verified
            data = self.assemble(links, work)
            os.chmod(data, 0o700)
            if os.path.exists(datadir):
                os.rmdir(datadir)  # empty, checked above
            os.rename(data, datadir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if standby:  # the host's own configuration (primary_conninfo, its slot) takes it from here
            with open(os.path.join(datadir, "standby.signal"), "w"):
                pass
            return record
        recovery_settings(self.bin, datadir, targets)
        local_config(datadir)
        return record


def archived_segments(versions, prefix):
    """{WAL segment name: when S3 stored it (epoch)} for the full segments under the prefix (versions())."""
    found = {}
    for key, entries in versions.items():
        name = key.rsplit("/", 1)[1]
        if key.startswith(f"{prefix}/wal/") and wal_archive.SEGMENT.match(name) and not entries[0]["DeleteMarker"]:
            found[name] = entries[0]["LastModified"].timestamp()
    return found


class KeptCopy:
    """The data directory the last backup restores to (a full backup's own, or its chain combined), verified and
    kept under the work directory while backups are incremental: the next one combines onto it instead of
    downloading and unpacking every earlier link. Before pg_combinebackup reads it, the files it will rebuild block by
    block (kept_reads) are checked against the copy's manifest (kept_changes): their combined checksums are computed
    afresh, so no later check would cover their unchanged blocks. The files it copies whole keep their manifest
    checksums, which pg_verifybackup of the combined copy checks (so they must be in the manifest). A file changed
    on disk since drops the copy, and the run falls back to S3. It holds the database's size on disk between runs;
    a full backup drops it before it starts."""

    def __init__(self, work_root):
        self.path = os.path.join(work_root, "verified")

    def of(self, backup_id):
        """The kept data directory when it is `backup_id`'s; else None, and a copy of any other backup goes."""
        try:
            with open(os.path.join(self.path, "backup_id")) as f:
                kept_id = f.read()
        except FileNotFoundError:
            kept_id = None
        if backup_id and kept_id == backup_id:
            return os.path.join(self.path, "data")
        self.discard()
        return None

    def discard(self):
        shutil.rmtree(self.path, ignore_errors=True)

    def keep(self, backup_id, data):
        self.discard()
        os.makedirs(self.path, mode=0o700)
        os.rename(data, os.path.join(self.path, "data"))
        with open(os.path.join(self.path, "backup_id"), "w") as f:  # last: a copy without it is never used
            f.write(backup_id)


INCREMENTAL_PREFIX = "INCREMENTAL."
INCREMENTAL_MAGIC = 0xD3AE1F0D  # pg_basebackup's header of an incremental file: magic, blocks, truncation length
BLOCK_BYTES = 8192


def kept_reads(incremental, kept):
    """The files of `kept` (a data directory) that pg_combinebackup of the `incremental` backup onto it reads:
    {relative path: True when it rebuilds the file block by block (the incremental backup has blocks of it, or
    changes its length), False when it copies it whole}. A header it cannot read counts as rebuilt (pg_combinebackup
    refuses it)."""
    reads = {}
    for directory, _, names in os.walk(incremental):
        for name in names:
            if not name.startswith(INCREMENTAL_PREFIX):
                continue
            relative = os.path.relpath(os.path.join(directory, name.removeprefix(INCREMENTAL_PREFIX)), incremental)
            try:
                size = os.path.getsize(os.path.join(kept, relative))
            except FileNotFoundError:
                continue  # nothing of the kept copy's in it
            with open(os.path.join(directory, name), "rb") as f:
                header = f.read(12)
            magic, blocks, length = struct.unpack("=III", header) if len(header) == 12 else (0, 0, 0)
            reads[relative] = magic != INCREMENTAL_MAGIC or blocks > 0 or length * BLOCK_BYTES != size
    return reads


def kept_changes(data, reads):
    """How the files of the backup in `data` that a combination reads (`reads`, from kept_reads) differ from its
    backup_manifest, whose own checksum is checked first: each must be there with its size, and a rebuilt one with
    its SHA-256 too (pg_verifybackup checks a whole copy's afterwards). One line each, none when they match."""
    try:
        with open(os.path.join(data, MANIFEST), "rb") as f:
            body = f.read()
        covered = body[:body.rindex(b"\n", 0, len(body) - 1) + 1]  # all but the last line, which holds the checksum
        manifest = json.loads(body)
        files = {entry.get("Path"): entry for entry in manifest["Files"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ["backup_manifest is missing or unreadable"]
    if hashlib.sha256(covered).hexdigest() != manifest.get("Manifest-Checksum"):
        return ["backup_manifest does not match its own checksum"]
    changes = []
    for path, rebuilt in sorted(reads.items()):
        entry = files.get(path)
        if entry is None or entry.get("Checksum-Algorithm") != "SHA256":
            changes.append(f"{path} has no SHA-256 in its manifest")
        elif os.path.getsize(os.path.join(data, path)) != entry["Size"]:
            changes.append(f"{path} is not the size its manifest says")
        elif rebuilt and sha256_of(os.path.join(data, path)) != entry["Checksum"]:
            changes.append(f"{path} does not match its manifest's checksum")
    return changes


def chain_ids(record):
    """The backups a restore of `record` combines, full backup first: its own id alone for a full backup (records
    from before incremental backups have no chain)."""
    return record.get("chain") or [record["id"]]


def whole_chains(records):
    """(the records whose chain is whole, [(backup id, why not)]), oldest first: an incremental backup restores
    only on top of every link before it, each trusted, on the same timeline, one starting after the other ended."""
    whole, broken = {}, []
    for record in records:  # ids are start times: a link comes before what is built on it
        chain = chain_ids(record)
        if not (isinstance(chain, list) and all(isinstance(i, str) for i in chain) and chain
                and chain[-1] == record["id"] and chain == sorted(set(chain))):
            broken.append((record["id"], f"its chain {chain!r} does not end with it in time order"))
            continue
        missing = next((backup_id for backup_id in chain[:-1] if backup_id not in whole), None)
        parent = whole.get(chain[-2]) if len(chain) > 1 else None
        if missing:
            broken.append((record["id"], f"backup {missing}, a link of its chain, is missing or refused: a broken "
                                         "chain, not restorable"))
        elif parent and (chain_ids(parent) != chain[:-1] or parent["timeline"] != record["timeline"]
                         or lsn_value(parent["end_lsn"]) > lsn_value(record["start_lsn"])):
            broken.append((record["id"], f"it does not follow backup {parent['id']}, its parent (chain, timeline or "
                                         "WAL range)"))
        else:
            whole[record["id"]] = record
    return list(whole.values()), broken


def incremental_parent(trusted, now, full_every_s, timeline):
    """The backup the next one is incremental on, or None for a full one: the newest trusted backup, while it is
    on the current timeline and the full backup its chain starts with began less than `full_every_s` ago (0:
    every backup full). Trusted records only, so a broken chain is never built on."""
    if not trusted or full_every_s <= 0:
        return None
    newest = trusted[-1]
    full = next(r for r in trusted if r["id"] == chain_ids(newest)[0])
    if newest["timeline"] != timeline or now - full["started_at"] >= full_every_s:
        return None
    return newest


def started_at(backup_id):
    """The epoch a backup id names (ids are their backup's start, UTC)."""
    return datetime.datetime.strptime(backup_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def sha256_of(path):
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            sha.update(block)
    return sha.hexdigest()


def _utc(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")


def target_problem(trusted, segments, target_time=None, target_lsn=None):
    """None when the target lies within what the archive can restore to, else why, with the archive's range.
    `trusted`: the vetted records, oldest first; `segments`: archived_segments(). Asked before anything is
    downloaded: PostgreSQL would otherwise make the cluster and only then find that recovery ended before the
    target."""
    if not trusted or (target_time is None and target_lsn is None):
        return None  # nothing to restore from is choose()'s to say
    first, newest = trusted[0], trusted[-1]
    last = max(segments, key=lambda n: (n[8:], n[:8])) if segments else None
    # A backup holds the WAL to its own end: the archive reaches at least the newest backup's end.
    if last and segments[last] > newest["finished_at"]:
        end_time, end_lsn, end = segments[last], wal_archive.segment_end(last), f"segment {last}, the last archived"
    else:
        end_time, end_lsn, end = newest["finished_at"], lsn_value(newest["end_lsn"]), f"where backup {newest['id']} ended"
    span = (f"the archive restores from {_utc(first['finished_at'])} ({first['end_lsn']}, where backup {first['id']} "
            f"ended) to {_utc(end_time)} ({end})")
    if (target_time is not None and target_time <= first["finished_at"]) or (
            target_lsn is not None and lsn_value(target_lsn) < lsn_value(first["end_lsn"])):
        return f"REFUSED: the target is before the oldest verified backup ended: {span}"
    if (target_time is not None and target_time > end_time) or (target_lsn is not None and lsn_value(target_lsn) >= end_lsn):
        return (f"REFUSED: the target is past the archive's end: {span}. If it is in the WAL the primary is writing "
                "now, wait for archive_timeout to archive that segment, or run select pg_switch_wal() on the primary, "
                "and restore again")
    return None


def replay_shortfall(history, archived):
    """None when a copy promoted at the end of the archive replayed it to its last segment, else why not.
    `history`: the promotion's timeline history file; `archived`: the parent timeline's archived segments."""
    entries = [line.split() for line in history.splitlines() if line.strip() and not line.startswith("#")]
    parent, switched = int(entries[-1][0]), entries[-1][1]
    if archived and lsn_value(switched) < wal_archive.segment_position(archived[-1]):
        return (f"replay stopped at {switched}, but the archive holds timeline {parent}'s WAL up to segment "
                f"{archived[-1]}: a segment between could not be read (a gap in the archive?), so the restored "
                "cluster misses what came after; drop it and restore again once the archive is whole")
    return None


def replayed_to_end(archive, datadir):
    """replay_shortfall() for the copy in `datadir`, promoted after a restore without a target."""
    wal = os.path.join(datadir, "pg_wal")
    newest = max(f for f in os.listdir(wal) if wal_archive.HISTORY.match(f))
    with open(os.path.join(wal, newest)) as f:
        history = f.read()
    parent = int(history.strip().splitlines()[-1].split()[0])
    return replay_shortfall(history, archive.segments(parent))


def recovery_settings(bin_directory, datadir, targets, action="promote"):
    """Replay from the archive to the target, then `action`. Written into the restored copy's own
    postgresql.auto.conf, so they win over any configuration file: archiving stays off (a clone shares the
    source's system identifier and must never write into its archive), and the limits recovery checks are
    the source's own (from pg_controldata)."""
    control = subprocess.run([f"{bin_directory}/pg_controldata", datadir], check=True, capture_output=True, text=True).stdout
    lines = dict(line.split(":", 1) for line in control.splitlines() if ":" in line)
    settings = {name: lines[label].strip() for name, label in layout.HOT_STANDBY_SENSITIVE.items()}
    fetch = f"{layout.program('wal-archive')} fetch %f %p"
    source = os.environ.get("MCP_WAL_ARCHIVE_CONFIG")  # another archive than this host's (restore.py's source)
    settings.update({"archive_mode": "off", "restore_command": f"MCP_WAL_ARCHIVE_CONFIG={source} {fetch}" if source else fetch,
                     "recovery_target_action": action, **targets})
    with open(os.path.join(datadir, "postgresql.auto.conf"), "a") as f:
        f.write("# Written by base_backup.py restore\n")
        for name, value in settings.items():
            f.write(f"{name} = '{value}'\n")
    with open(os.path.join(datadir, "recovery.signal"), "w"):
        pass


def local_config(datadir):
    """Configuration files for `pg_createcluster` to adopt (Debian keeps a cluster's in /etc, so a backup has
    none): local connections only, everything else from postgresql.auto.conf and PostgreSQL's defaults."""
    files = {
        "postgresql.conf": "# Written by base_backup.py restore: a restored copy, reachable over the local socket only.\n"
                           "listen_addresses = ''\n",
        "pg_hba.conf": "local all postgres peer\nlocal all all scram-sha-256\n",
        "pg_ident.conf": "",
    }
    for name, content in files.items():
        with open(os.path.join(datadir, name), "w") as f:
            f.write(content)


def restore_point_in(dump, name):
    """The LSN of the last restore point called `name` in pg_waldump's output, or None."""
    found = re.findall(rf"lsn: ([0-9A-F]+/[0-9A-F]+), .*desc: RESTORE_POINT {re.escape(name)}$", dump, re.MULTILINE)
    return found[-1] if found else None


def record_problems(record, backup_id, owner, record_version, archive_version, archive_sha256, manifest):
    """Why a completion record does not agree with S3's own view of its backup ([] when it does): S3 dates and
    sizes what it stores, and the manifest pg_basebackup wrote holds the WAL range."""
    try:
        started = datetime.datetime.fromtimestamp(record["started_at"], datetime.timezone.utc)
        checks = {
            "its id is not its start time": record["id"] == backup_id == started.strftime("%Y%m%dT%H%M%SZ"),
            "it is another cluster's": record["system_identifier"] == owner,
            "it is not marked verified": record["verified"] is True,
            "its finish time is not when S3 received it":
                abs(record_version["LastModified"].timestamp() - record["finished_at"]) <= RECORD_CLOCK_SLACK_S
                and record["started_at"] <= record["finished_at"],
            "its archive's size is not the recorded size": archive_version["Size"] == record["size_bytes"],
            "its archive is newer than the record": archive_version["LastModified"] <= record_version["LastModified"],
            "its archive's stored sha256 is not the recorded one": archive_sha256 == record["sha256"],
            "its manifest's sha256 is not the recorded one":
                hashlib.sha256(manifest).hexdigest() == record.get("manifest_sha256"),
        }
        failed = [why for why, passed in checks.items() if not passed]
        if failed:
            return failed
        manifest_range = wal_range_of(json.loads(manifest))
        if manifest_range != (record["timeline"], record["start_lsn"], record["end_lsn"]):
            return [f"its WAL range is not its manifest's ({manifest_range[0]}, {manifest_range[1]}..{manifest_range[2]})"]
        if lsn_value(record["start_lsn"]) > lsn_value(record["end_lsn"]):
            return ["its WAL range ends before it starts"]
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, OSError, AttributeError) as exc:
        return [f"the record or its manifest is malformed ({type(exc).__name__}: {exc})"]
    return []


def retention_plan(trusted, protected_ids, keys, opens, prefix):
    """(the oldest backup kept, the keys to delete) for a window that opens at `opens`: the newest trusted backup
    that finished before then is where a restore to the window's first moment starts, so it and every later one
    stay, with the links of their chains and the WAL from the oldest start among them; `protected_ids` (refused
    records: evidence) stay too."""
    before = [r for r in trusted if r["finished_at"] <= opens]
    oldest_kept = before[-1] if before else trusted[0]
    kept = [r for r in trusted if r["id"] >= oldest_kept["id"]]
    first_needed = min(segment_number(r["start_lsn"]) for r in kept)
    # A kept incremental backup restores on top of its whole chain (their WAL before it is not needed).
    protected = {backup_id for r in kept for backup_id in chain_ids(r)} | set(protected_ids)
    doomed = []
    for key in keys:
        name = key.rsplit("/", 1)[1]
        if key.startswith(f"{prefix}/backups/"):
            backup_id = key.split("/")[-2]
            if backup_id < oldest_kept["id"] and backup_id not in protected:
                doomed.append(key)
        elif key.startswith(f"{prefix}/wal/") and wal_archive.WAL_FILE.match(name):
            if file_segment(name) < first_needed:
                doomed.append(key)
    return oldest_kept, sorted(doomed)


MULTIPART_BYTES = 64 * 2**20


def upload(archive, path, key, digest):
    """Multipart in 64 MiB parts; below that one put, read into memory (its Content-MD5 is the put's own)."""
    from boto3.s3.transfer import TransferConfig
    if os.path.getsize(path) < MULTIPART_BYTES:
        with open(path, "rb") as f:
            archive.put_new(key, f.read(), {"sha256": digest})
    else:
        archive.s3.upload_file(path, archive.bucket, key, Config=TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES),
            ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": digest}, **archive._sse()})
    stored = archive.s3.head_object(Bucket=archive.bucket, Key=key)["Metadata"].get("sha256")
    if stored != digest:
        raise wal_archive.ArchiveError(f"s3://{archive.bucket}/{key} does not show the backup's checksum after upload")


def download(archive, key, path, digest):
    archive.s3.download_file(archive.bucket, key, path)
    if sha256_of(path) != digest:
        raise wal_archive.ArchiveError(f"s3://{archive.bucket}/{key} does not match its recorded sha256: not restored")


def record_backup(record):
    """The last verified backup, for monitoring's freshness alerts (a failed run is the unit's failure metric)."""
    textfile.write("base_backup", [
        ("mcp_base_backup_last_success_timestamp_seconds", "When the last verified base backup finished.",
         record["finished_at"]),
        ("mcp_base_backup_size_bytes", "Packed size of the last base backup.", record["size_bytes"]),
        ("mcp_base_backup_duration_seconds", "Backup, verification, packing and upload of the last base backup.",
         record["finished_at"] - record["started_at"]),
        ("mcp_base_backup_verified", "1 when pg_verifybackup passed the last base backup.", int(record["verified"])),
        ("mcp_base_backup_chain_length", "Backups a restore of the last one combines (1: it is a full backup).",
         len(chain_ids(record))),
        ("mcp_base_backup_last_full_timestamp_seconds", "When the full backup the last one's chain starts with began.",
         started_at(chain_ids(record)[0])),
    ])


def main(argv):
    parser = argparse.ArgumentParser(prog="mcp-base-backup", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--work-dir", required=True)
    run.add_argument("--full-every-days", type=float, default=0.0,
                     help="incremental backups on the newest until its chain's full one is this old (0: all full)")
    sub.add_parser("list", help="the trusted backups' records, oldest first, one JSON object a line")
    retain = sub.add_parser("retain")
    retain.add_argument("--window-days", type=float, required=True)
    retain.add_argument("--credentials", required=True, help="keys that may delete (not the archive's)")
    retain.add_argument("--max-delete-percent", type=float, required=True,
                        help="a run that would delete more of the prefix's object versions deletes nothing")
    restore = sub.add_parser("restore")
    restore.add_argument("datadir")
    for target in ("time", "lsn", "xid", "name"):
        restore.add_argument(f"--target-{target}")
    restore.add_argument("--standby", action="store_true",
                         help="rebuild this host's own replica: the newest backup, then the archive and the primary")
    replayed = sub.add_parser("replayed", help="after a restore without a target: did replay reach the archive's end?")
    replayed.add_argument("datadir")
    args = parser.parse_args(argv[1:])
    config = wal_archive.load_config(os.environ.get("MCP_WAL_ARCHIVE_CONFIG", wal_archive.CONFIG))
    if args.command == "retain":
        config["credentials_file"] = args.credentials
    backups = Backups(config)
    try:
        if args.command == "run":
            record = backups.run(args.work_dir, args.full_every_days * 86400)
            if record:
                record_backup(record)
        elif args.command == "retain":
            if on_standby("retention"):
                return 0
            # A capped run raises: the unit fails, and its failure record alerts (MCPScheduledUnitFailed).
            deleted, refused, locked = backups.retain(args.window_days * 86400, args.max_delete_percent)
            textfile.write("backup_retention", [
                ("mcp_backup_retention_last_success_timestamp_seconds", "When retention last ran to its end.",
                 time.time()),
                ("mcp_backup_retention_deleted_objects", "Objects the last retention run deleted.", len(deleted)),
                ("mcp_backup_retention_locked_versions", "Versions retention would delete but their lock holds.",
                 locked),
                ("mcp_backup_retention_refused_records",
                 "Completion records retention did not trust (forged, altered or overwritten).", len(refused))])
        elif args.command == "replayed":
            shortfall = replayed_to_end(backups.archive, args.datadir)
            if shortfall:
                raise wal_archive.ArchiveError(shortfall)
            say("replay reached the archive's last segment")
        elif args.command == "list":
            trusted, refused = backups.vet(backups.versions())
            for backup_id, why in refused:
                print(f"backup {backup_id} is not listed: {why}", file=sys.stderr)
            for record in trusted:
                print(json.dumps(record, sort_keys=True))
        else:
            targets = {f"recovery_target_{t}": getattr(args, f"target_{t}") for t in ("time", "lsn", "xid", "name")
                       if getattr(args, f"target_{t}")}
            if args.standby and targets:
                parser.error("--standby follows the primary to its newest WAL: no --target-*")
            record = backups.restore(args.datadir, targets, standby=args.standby)
            print(json.dumps(record, sort_keys=True))
    except (wal_archive.ArchiveError, subprocess.CalledProcessError) as exc:
        print(f"base_backup {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # S3 unreachable or refused: one line, non-zero (the unit's OnFailure records it)
        print(f"base_backup {args.command}: {type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
