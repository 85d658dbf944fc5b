#!/usr/bin/python3
"""Verified base backups to S3, and restores from them.

    base_backup.py run        one backup (mcp-base-backup.service): pg_basebackup -> pg_verifybackup -> pack ->
                              multipart upload with checksums and SSE -> completion record
    base_backup.py list       the backups in the archive, oldest first (JSON lines)
    base_backup.py retain --window-days N
                              delete what a restore to any time in the last N days does not need (mcp-backup-
                              retention.service, with credentials that may delete)
    base_backup.py restore DATADIR [--target-time T | --target-lsn L | --target-xid X | --target-name N]
                              the newest verified backup that ends before the target, unpacked, verified and set
                              up to replay WAL from the archive to the target and then stop (recovery.signal)
    base_backup.py restore --standby DATADIR
                              rebuild this host's replica: the newest verified backup, unpacked and verified, set
                              up as a standby (standby.signal); Patroni's first replica creation method, which
                              starts it following the leader

Runs only where `pg_is_in_recovery()` is false: on a standby `run` says so and exits 0. Settings come from the
WAL archiver's configuration (/etc/mcp-portal/wal-archive.json): same bucket, prefix and keys.
"""

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

from hostside import layout, textfile, wal_archive

RECORD = "backup.json"
ARCHIVE = "base.tar.gz"


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
        ranges = json.load(f)["WAL-Ranges"]
    return ranges[-1]["Timeline"], ranges[0]["Start-LSN"], ranges[-1]["End-LSN"]


SEGMENT_BYTES = 16 * 2**20
SEGMENTS_PER_XLOGID = 2**32 // SEGMENT_BYTES


def segment_number(lsn):
    """The WAL segment (log id * segments per id + segment) holding `lsn`, as WAL file names number them."""
    return lsn_value(lsn) // SEGMENT_BYTES


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

    def run(self, work_root):
        if on_standby("base backups"):
            return None
        self.archive.check_owner()
        started = time.time()
        backup_id = datetime.datetime.fromtimestamp(started, datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        work = os.path.join(work_root, backup_id)
        data = os.path.join(work, "data")
        os.makedirs(work, mode=0o700)
        try:
            say(f"{backup_id}: pg_basebackup (plain, WAL streamed, fast checkpoint, SHA-256 manifest)")
            subprocess.run([f"{self.bin}/pg_basebackup", "-D", data, "-Fp", "-X", "stream", "-c", "fast",
                            "--manifest-checksums=SHA256", "-l", f"mcp-portal {backup_id}", "-h", layout.SOCKET_DIR],
                           check=True)
            copied = time.time()
            say(f"{backup_id}: pg_verifybackup")
            subprocess.run([f"{self.bin}/pg_verifybackup", data], check=True)
            verified = time.time()
            timeline, start_lsn, end_lsn = wal_range(os.path.join(data, "backup_manifest"))
            packed = os.path.join(work, ARCHIVE)
            with open(packed, "wb") as raw:
                hashing = HashingWriter(raw)
                with tarfile.open(fileobj=hashing, mode="w:gz", compresslevel=1) as tar:
                    tar.add(data, arcname="data")
            say(f"{backup_id}: packed {hashing.size / 2**20:.1f} MiB; uploading")
            upload(self.archive, packed, self.key(backup_id, ARCHIVE), hashing.sha256.hexdigest())
            finished = time.time()
            record = {
                "id": backup_id, "system_identifier": self.archive.system_identifier(), "timeline": timeline,
                "start_lsn": start_lsn, "end_lsn": end_lsn, "started_at": started, "finished_at": finished,
                "size_bytes": hashing.size, "sha256": hashing.sha256.hexdigest(), "verified": True,
                "durations_s": {"pg_basebackup": round(copied - started, 1), "pg_verifybackup": round(verified - copied, 1),
                                "pack_and_upload": round(finished - verified, 1)},
                "server_version": psql("show server_version"),
            }
            body = json.dumps(record, indent=1).encode()
            self.archive.s3.put_object(Bucket=self.archive.bucket, Key=self.key(backup_id, RECORD), Body=body,
                                       IfNoneMatch="*", ChecksumAlgorithm="SHA256", **self.archive._sse())
            say(f"{backup_id}: done in {finished - started:.1f} s, WAL {start_lsn}..{end_lsn} on timeline {timeline}")
            return record
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def retain(self, window_s, now=None):
        """Delete what a point-in-time restore to any moment of the last `window_s` seconds does not need: the
        backups before the newest one that finished before the window opened (kept: it is where such a restore
        starts), and the WAL before that backup's start. Never the newest verified backup, never a .history file.
        Deletes every version (the bucket is versioned); returns what it deleted."""
        if on_standby("retention"):
            return []
        opens = (now or time.time()) - window_s
        verified = [r for r in self.records() if r.get("verified")]
        if not verified:
            say("no verified backup yet: nothing is deleted")
            return []
        before = [r for r in verified if r["finished_at"] <= opens]
        oldest_kept = before[-1] if before else verified[0]
        first_needed = segment_number(oldest_kept["start_lsn"])
        doomed = []
        for key in self.keys():
            name = key.rsplit("/", 1)[1]
            if key.startswith(f"{self.archive.prefix}/backups/"):
                backup_id = key.split("/")[-2]
                if backup_id < oldest_kept["id"] and backup_id != verified[-1]["id"]:
                    doomed.append(key)
            elif key.startswith(f"{self.archive.prefix}/wal/") and wal_archive.WAL_FILE.match(name):
                if int(name[8:16], 16) * SEGMENTS_PER_XLOGID + int(name[16:24], 16) < first_needed:
                    doomed.append(key)
        say(f"retention: window {window_s / 86400:g} days, oldest kept backup {oldest_kept['id']}; "
            f"deleting {len(doomed)} objects")
        self.delete_all_versions(doomed)
        return doomed

    def keys(self):
        """Every key under the cluster's prefix. Listed by the prefix without its trailing '/' and filtered here:
        the fleet's S3 endpoint (moto) rejects the signature of a listing whose prefix holds a '/'. In prod this
        pages over the WAL keys too."""
        pages = self.archive.s3.get_paginator("list_objects_v2").paginate(Bucket=self.archive.bucket,
                                                                          Prefix=self.archive.prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])
                if obj["Key"].startswith(self.archive.prefix + "/")]

    def delete_all_versions(self, keys):
        s3, wanted = self.archive.s3, set(keys)
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=self.archive.bucket, Prefix=self.archive.prefix)
        versions = [{"Key": v["Key"], "VersionId": v["VersionId"]} for page in pages
                    for v in page.get("Versions", []) + page.get("DeleteMarkers", []) if v["Key"] in wanted]
        for start in range(0, len(versions), 1000):
            s3.delete_objects(Bucket=self.archive.bucket, Delete={"Objects": versions[start:start + 1000], "Quiet": True})

    def choose(self, target_time=None, target_lsn=None):
        """The newest verified backup of the cluster the prefix belongs to that ends before the target (the prefix
        may be another environment's: a staging rebuild restores prod's backups on a host of its own)."""
        owner = self.archive.owner() or self.archive.system_identifier()
        candidates = [r for r in self.records() if r.get("verified") and r["system_identifier"] == owner]
        if target_time is not None:
            candidates = [r for r in candidates if r["finished_at"] < target_time]
        if target_lsn is not None:
            candidates = [r for r in candidates if lsn_value(r["end_lsn"]) <= lsn_value(target_lsn)]
        if not candidates:
            raise wal_archive.ArchiveError("no verified backup of this cluster ends before the target")
        return candidates[-1]

    def restore(self, datadir, targets, standby=False):
        if os.path.exists(datadir) and os.listdir(datadir):
            raise wal_archive.ArchiveError(f"{datadir} is not empty: restore into an empty directory")
        target_time = targets.get("recovery_target_time")
        epoch = datetime.datetime.fromisoformat(target_time).timestamp() if target_time else None
        record = self.choose(epoch, targets.get("recovery_target_lsn"))
        say(f"restoring backup {record['id']} (WAL {record['start_lsn']}..{record['end_lsn']})")
        parent = os.path.dirname(os.path.abspath(datadir))
        packed = os.path.join(parent, f".{record['id']}.{ARCHIVE}")
        unpack = os.path.join(parent, f".{record['id']}.unpacked")
        try:  # everything happens beside `datadir`; it appears only once the copy is verified
            download(self.archive, self.key(record["id"], ARCHIVE), packed, record["sha256"])
            with tarfile.open(packed, "r:gz") as tar:
                tar.extractall(unpack, filter="data")
            say("pg_verifybackup on the restored copy")
            subprocess.run([f"{self.bin}/pg_verifybackup", os.path.join(unpack, "data")], check=True)
            os.chmod(os.path.join(unpack, "data"), 0o700)
            if os.path.exists(datadir):
                os.rmdir(datadir)  # empty, checked above
            os.rename(os.path.join(unpack, "data"), datadir)
        finally:
            shutil.rmtree(unpack, ignore_errors=True)
            if os.path.exists(packed):
                os.unlink(packed)
        if standby:  # the host's own configuration (primary_conninfo, its slot) takes it from here
            with open(os.path.join(datadir, "standby.signal"), "w"):
                pass
            return record
        recovery_settings(self.bin, datadir, targets)
        local_config(datadir)
        return record


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


def upload(archive, path, key, digest):
    from boto3.s3.transfer import TransferConfig
    archive.s3.upload_file(path, archive.bucket, key, Config=TransferConfig(multipart_threshold=64 * 2**20,
                                                                            multipart_chunksize=64 * 2**20),
                           ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": digest}, **archive._sse()})
    stored = archive.s3.head_object(Bucket=archive.bucket, Key=key)["Metadata"].get("sha256")
    if stored != digest:
        raise wal_archive.ArchiveError(f"s3://{archive.bucket}/{key} does not show the backup's checksum after upload")


def download(archive, key, path, digest):
    archive.s3.download_file(archive.bucket, key, path)
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            sha.update(block)
    if sha.hexdigest() != digest:
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
    ])


def main(argv):
    parser = argparse.ArgumentParser(prog="mcp-base-backup", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--work-dir", required=True)
    sub.add_parser("list")
    retain = sub.add_parser("retain")
    retain.add_argument("--window-days", type=float, required=True)
    retain.add_argument("--credentials", required=True, help="keys that may delete (not the archive's)")
    restore = sub.add_parser("restore")
    restore.add_argument("datadir")
    for target in ("time", "lsn", "xid", "name"):
        restore.add_argument(f"--target-{target}")
    restore.add_argument("--standby", action="store_true",
                         help="rebuild this host's own replica: the newest backup, then the archive and the primary")
    args = parser.parse_args(argv[1:])
    config = wal_archive.load_config(os.environ.get("MCP_WAL_ARCHIVE_CONFIG", wal_archive.CONFIG))
    if args.command == "retain":
        config["credentials_file"] = args.credentials
    backups = Backups(config)
    try:
        if args.command == "run":
            record = backups.run(args.work_dir)
            if record:
                record_backup(record)
        elif args.command == "retain":
            deleted = backups.retain(args.window_days * 86400)
            textfile.write("backup_retention", [
                ("mcp_backup_retention_last_success_timestamp_seconds", "When retention last ran to its end.",
                 time.time()),
                ("mcp_backup_retention_deleted_objects", "Objects (all versions) the last retention run deleted.",
                 len(deleted))])
        elif args.command == "list":
            for record in backups.records():
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
