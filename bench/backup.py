"""Base backup and point-in-time restore of a >= 2 GB database against the raw floor, on the fleet. Writes
bench/results/backup.md.

On the primary, with a `pgbench -i -s 150` database added (about 2.3 GiB of data directory):
  - backup, ours: mcp-base-backup.service (pg_basebackup, pg_verifybackup, pack, multipart upload with checksums,
    read back, completion record); the floor: `tar | gzip -1 | aws s3 cp -` of the live data directory
    (what a cron script does; not even a consistent copy);
  - an incremental backup on it (`run --full-every-days 7`, verified by combining the chain) after an update of
    10% of the accounts (contiguous: a tenth of the table's pages), against the full one: time and bytes;
  - restore, ours: `base_backup.py restore --target-name` (download, SHA-256 check, unpack, pg_verifybackup,
    recovery settings) of the chain (pg_combinebackup), then the copy started on a scratch port, replaying the
    archive's WAL to a restore point made after the backup and promoting; the files of the full backup alone
    (`--target-lsn` before the incremental one ended); the floor: `aws s3 cp - | tar -xz` of the same backup.
Same host, endpoint, keys and SSE-KMS. Needs the fleet up and deployed (`make local`). Run as root:
`make bench-backup`.
"""

import datetime
import json
import os
import platform
import sys
from pathlib import Path

from remote import leader, on

HOST = leader()
SCALE = 150  # pgbench scale: 15M accounts, a data directory over 2 GiB
RESULTS = Path(__file__).resolve().parent / "results" / "backup.md"

RUNNER = r'''
import json, os, subprocess, sys, time
config = json.load(open("/etc/mcp-portal/wal-archive.json"))
keys = json.load(open(config["credentials_file"]))
env = dict(os.environ, AWS_ACCESS_KEY_ID=keys["access_key_id"], AWS_SECRET_ACCESS_KEY=keys["secret_access_key"],
           AWS_DEFAULT_REGION=config["region"])
aws = f"aws --endpoint-url {config['endpoint_url']} s3 cp --only-show-errors"
raw = f"s3://{config['bucket']}/bench-{sys.argv[1]}/raw.tar.gz"
sse = f"--sse aws:kms --sse-kms-key-id {config['kms_key_id']}"

def timed(command, **kwargs):
    started = time.monotonic()
    subprocess.run(command, shell=True, check=True, env=env, stdout=subprocess.DEVNULL, **kwargs)
    return time.monotonic() - started

def psql(sql, port=5432, host="/var/run/postgresql", db="postgres"):
    return subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-h", host, "-p", str(port), "-d", db, "-XAtqc", sql],
                          check=True, capture_output=True, text=True).stdout.strip()

def newest():
    return json.loads(subprocess.run(["runuser", "-u", "postgres", "--", "/usr/local/sbin/mcp-base-backup", "list"],
                                     check=True, capture_output=True, text=True).stdout.splitlines()[-1])

seconds, sizes = {}, {}
seconds["backup, ours"] = timed("systemctl start mcp-base-backup.service")
full = newest()
sizes["full"] = full["size_bytes"]
seconds["backup, floor: tar, gzip -1, aws s3 cp"] = timed(
    f"tar -cf - -C /var/lib/postgresql/17/main . 2>/dev/null | gzip -1 | {aws} {sse} - {raw}")
accounts = int(psql("select count(*) from pgbench_accounts", db="bench_backup"))
psql(f"update pgbench_accounts set abalance = abalance + 1 where aid <= {accounts // 10}",
     db="bench_backup")
seconds["backup, ours: incremental after a 10% change"] = timed(
    "runuser -u postgres -- /usr/local/sbin/mcp-base-backup run --work-dir /var/lib/postgresql/backup-work "
    "--full-every-days 7")
incremental = newest()
assert incremental["chain"] == [full["id"], incremental["id"]], incremental
sizes["incremental"] = incremental["size_bytes"]
# The restore's target: a restore point after the backup, its segment archived.
psql(f"select pg_create_restore_point('bench-{sys.argv[1]}')")
segment = psql("select pg_walfile_name(pg_switch_wal())")
while psql("select last_archived_wal from pg_stat_archiver") < segment:
    time.sleep(1)
scratch = "/var/tmp/bench-restore"
subprocess.run(f"rm -rf {scratch} && install -d -o postgres -m 700 {scratch}", shell=True, check=True)
seconds["restore, ours: files of the full backup alone (download, check, unpack, verify)"] = timed(
    f"runuser -u postgres -- /usr/local/sbin/mcp-base-backup restore {scratch}/full --target-lsn {incremental['start_lsn']}")
subprocess.run(f"rm -rf {scratch}/full", shell=True, check=True)
seconds["restore, ours: files of the chain (download, check, unpack, combine, verify)"] = timed(
    f"runuser -u postgres -- /usr/local/sbin/mcp-base-backup restore {scratch}/ours --target-name bench-{sys.argv[1]}")
size = int(subprocess.run(f"du -sb {scratch}/ours | cut -f1", shell=True, capture_output=True, text=True).stdout)
started = time.monotonic()
subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/17/bin/pg_ctl", "-D", f"{scratch}/ours", "-w",
                "-t", "1800", "-l", f"{scratch}/log", "-o", f"-p 5436 -k {scratch} -c archive_mode=off", "start"],
               check=True, stdout=subprocess.DEVNULL)
while psql("select pg_is_in_recovery()", port=5436, host=scratch) == "t":
    time.sleep(0.5)
seconds["restore, ours: the chain + replay to the restore point, promote"] = (
    seconds["restore, ours: files of the chain (download, check, unpack, combine, verify)"] + time.monotonic() - started)
subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/17/bin/pg_ctl", "-D", f"{scratch}/ours", "-m",
                "fast", "stop"], check=True, stdout=subprocess.DEVNULL)
os.makedirs(f"{scratch}/raw")
seconds["restore, floor: aws s3 cp, tar -xz"] = timed(f"{aws} {raw} - | tar -xzf - -C {scratch}/raw")
subprocess.run(f"rm -rf {scratch}", shell=True, check=True)
print(json.dumps({"seconds": seconds, "data_bytes": size, "sizes": sizes,
                  "steps": {"full": full["durations_s"], "incremental": incremental["durations_s"]}}))
'''


def main():
    if os.geteuid() != 0:
        sys.exit("bench/backup.py: run as root (it uses the fleet): make bench-backup")
    on(HOST, "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq awscli >/dev/null && "
             "runuser -u postgres -- psql -qX -c 'drop database if exists bench_backup' -c 'create database bench_backup' && "
             f"runuser -u postgres -- pgbench -i -s {SCALE} -q bench_backup 2>/dev/null", timeout=1200)
    run = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    try:
        measured = json.loads(on(HOST, f"python3 - {run} <<'PY'\n{RUNNER}\nPY", timeout=3600).stdout.strip().splitlines()[-1])
    finally:
        on(HOST, "runuser -u postgres -- psql -qX -c 'drop database if exists bench_backup'", timeout=120)
    seconds, sizes = measured["seconds"], measured["sizes"]
    steps = "; ".join(f"{kind}: " + ", ".join(f"{step} {value:g}" for step, value in measured["steps"][kind].items())
                      for kind in ("full", "incremental"))
    full_s, incremental_s = seconds["backup, ours"], seconds["backup, ours: incremental after a 10% change"]
    rows = []
    for kind, baseline in (("backup", "backup, floor: tar, gzip -1, aws s3 cp"), ("restore", "restore, floor: aws s3 cp, tar -xz")):
        for name, value in seconds.items():
            if name.startswith(kind):
                rows.append(f"| {name} | {value:.1f} | {value / seconds[baseline]:.2f}x |")
    RESULTS.write_text(f"""# Base backup and restore

Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench-backup` on
{platform.node()}: {os.cpu_count()} cores, kernel {platform.release()}. On `{HOST}` (a fleet host sharing the
machine's cores), to the fleet's S3 endpoint (moto on `s3`) with the archive's keys and SSE-KMS; a data directory
of {measured['data_bytes'] / 2**30:.2f} GiB restored (a `pgbench -i -s {SCALE}` database added). One run each; ratios
against the raw floor in the same run.

| what | seconds | vs floor |
|---|---|---|
{chr(10).join(rows)}

The incremental backup after a 10% change, against the full one in the same run: {incremental_s:.1f} s against
{full_s:.1f} s ({incremental_s / full_s:.2f}x the time, its chain's verification included), {sizes['incremental'] / 2**20:.1f}
MiB uploaded against {sizes['full'] / 2**20:.1f} MiB ({sizes['incremental'] / sizes['full']:.2f}x the bytes).
pgbench's rows compress well (gzip level 1), so the bytes are the packed archives' sizes. The steps, from the two
records (seconds): {steps}. For the incremental one, pg_verifybackup includes its verification as a chain: the
full backup downloaded and unpacked, pg_combinebackup, pg_verifybackup of the combined copy.

Ours does more than the floor: a consistent copy (pg_basebackup with its WAL), pg_verifybackup, a SHA-256
read back from S3 and a completion record; the restore checks the SHA-256 and runs pg_verifybackup before the
copy becomes a data directory, then replays the archive to the target. The floor copies a live data directory,
which may not restore at all.
""")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
