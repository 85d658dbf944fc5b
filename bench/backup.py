"""Base backups, full and incremental, and restores of them, on a database with incompressible data, against the raw
floor, on the fleet. Writes bench/results/backup.md and backup.png.

On the primary, a scratch database: `pgbench -i -s 150` (about 2.3 GiB, compresses well) and a table of random
bytes (NOISE_GIB, stored as is: TOAST does not compress it, nor does gzip), loaded frozen. Then:
  - backup, ours: mcp-base-backup.service, a full backup (pg_basebackup, pg_verifybackup, pack, multipart upload
    with checksums, read back, completion record); the floor: `tar | gzip -1 | aws s3 cp -` of the live data
    directory (what a cron script does; not even a consistent copy);
  - days of writes, shortened, each: TRANSACTIONS of pgbench's TPC-B, then a share of the accounts updated and the
    same share of the random rows replaced by new random bytes (REWRITTEN: each rewritten row's old page and its new
    version's page change), vacuumed; a checkpoint and the WAL summarizer caught up (timed apart: the hours before
    a nightly backup do that); then an incremental backup (`run --full-every-days 7`). The first is verified by
    combining its chain with every link from S3 (no copy kept: the timer's full backup keeps none), the others onto
    the copy the one before kept. The share of the database's blocks each day changed is read from PostgreSQL's WAL
    summaries: the days differ in size, to show what an incremental backup's time and bytes follow;
  - restore, ours: `base_backup.py restore` (download, SHA-256 check, unpack, pg_verifybackup, recovery settings)
    of the whole chain (pg_combinebackup), then the copy started on a scratch port, replaying the archive's WAL
    to a restore point made after the last backup and promoting; the files of the full backup alone
    (`--target-lsn` before the first incremental one ended); the floor: `aws s3 cp - | tar -xz` of the floor's copy.
The S3 endpoint (moto) and the disk's free space are sampled throughout. Same host, endpoint, keys and SSE-KMS. Needs the fleet up and deployed (`make local`). Run as root: `make bench-backup`.
"""

import datetime
import json
import os
import platform
import shutil
import sys
import threading
from pathlib import Path

from remote import leader, on

HOST = leader()
SCALE = 150  # pgbench scale: 15M accounts, about 2.3 GiB
# Random bytes beside pgbench's rows: a 4.4 GiB data directory. What limits it is this machine's disk, which the
# fleet's hosts share: three members' copies, the backup's work directory (three copies), a restore's copy, and the
# S3 endpoint's objects (moto keeps each in a temporary file on it, locked for the bucket's 30 days).
NOISE_GIB = 2
NEEDS_FREE_GIB = 60
NOISE_ROW = 8192  # bytes per row of random data
TRANSACTIONS = 10000  # pgbench TPC-B in a day
REWRITTEN = [1 / 20, 1 / 40, 1 / 20, 1 / 10]  # the share of the accounts and of the random rows each day rewrites
RESULTS = Path(__file__).resolve().parent / "results"
TIMERS = "mcp-base-backup.timer mcp-backup-retention.timer"

# COPY's text format, one row per line: id, then the payload as bytea hex. Rows [first, last).
NOISE = r'''
import os, sys
first, last = int(sys.argv[1]), int(sys.argv[2])
for row in range(first, last):
    sys.stdout.write(f"{row}\t\\\\x{os.urandom(%d).hex()}\n")
''' % NOISE_ROW

RUNNER = r'''
import json, os, subprocess, sys, time
run, noise_rows, transactions, rewritten = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
config = json.load(open("/etc/mcp-portal/wal-archive.json"))
keys = json.load(open(config["credentials_file"]))
env = dict(os.environ, AWS_ACCESS_KEY_ID=keys["access_key_id"], AWS_SECRET_ACCESS_KEY=keys["secret_access_key"],
           AWS_DEFAULT_REGION=config["region"])
aws = f"aws --endpoint-url {config['endpoint_url']} s3 cp --only-show-errors"
raw = f"s3://{config['bucket']}/bench-{run}/raw.tar.gz"
sse = f"--sse aws:kms --sse-kms-key-id {config['kms_key_id']}"
take = ("runuser -u postgres -- /usr/local/sbin/mcp-base-backup run --work-dir /var/lib/postgresql/backup-work "
        "--full-every-days 7")

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

def a_day_of_writes(start, share):
    """`transactions` of pgbench's TPC-B, then the accounts and the random rows from `start` (a share of each
    table's rows) to `start` + `share` rewritten: updated, and replaced by new random bytes; then vacuumed
    (autovacuum's share of the day)."""
    subprocess.run(["runuser", "-u", "postgres", "--", "pgbench", "-n", "-c", "2", "-t", str(transactions // 2),
                    "bench_backup"], check=True, capture_output=True)
    accounts = int(psql("select count(*) from pgbench_accounts", db="bench_backup"))
    psql(f"update pgbench_accounts set abalance = abalance + 1 where aid > {int(start * accounts)} "
         f"and aid <= {int((start + share) * accounts)}", db="bench_backup")
    first, last = int(start * noise_rows), int((start + share) * noise_rows)
    psql(f"delete from noise where id >= {first} and id < {last}", db="bench_backup")
    psql(f"copy noise from program 'python3 /var/tmp/bench-noise.py {first} {last}'", db="bench_backup")
    psql("vacuum (analyze)", db="bench_backup")

def changed_share(since, until):
    """The share of the database's blocks changed between two backups' starts (checkpoint redo points, where WAL
    summaries end), from the summaries: what an incremental backup copies."""
    changed = psql("select count(*) from (select distinct relfilenode, reltablespace, reldatabase, relforknumber, "
                   "relblocknumber from pg_available_wal_summaries() s, "
                   "pg_wal_summary_contents(s.tli, s.start_lsn, s.end_lsn) c "
                   f"where s.start_lsn >= '{since}' and s.end_lsn <= '{until}' and not c.is_limit_block) b")
    return int(changed) * 8192 / int(psql("select sum(pg_database_size(oid)) from pg_database"))

def settle():
    """What the hours between a day's writes and the nightly backup do, timed apart from the backup: a checkpoint,
    and the WAL summarizer (which an incremental backup waits for) caught up with the day's WAL."""
    started = time.monotonic()
    psql("checkpoint")
    redo = psql("select redo_lsn from pg_control_checkpoint()")  # a summary ends there (and none later until the next)
    while psql(f"select summarized_lsn >= '{redo}' from pg_get_wal_summarizer_state()") != "t":
        time.sleep(0.2)
    return time.monotonic() - started

seconds, settled = {}, []
seconds["backup, ours: full"] = timed("systemctl start mcp-base-backup.service")
full = newest()
seconds["backup, floor: tar, gzip -1, aws s3 cp"] = timed(
    f"tar -cf - -C /var/lib/postgresql/17/main . 2>/dev/null | gzip -1 | {aws} {sse} - {raw}")
incrementals, parent, start = [], full, 0.0
for day, share in enumerate(rewritten):
    a_day_of_writes(start, share)
    start += share
    settled.append(settle())
    name = f"backup, ours: incremental {day + 1}, chain verified {'onto the kept copy' if day else 'from S3'}"
    seconds[name] = timed(take)
    made = newest()
    incrementals.append({"name": name, "record": made,
                         "changed": changed_share(parent["start_lsn"], made["start_lsn"])})
    parent = made
assert parent["chain"] == [full["id"]] + [i["record"]["id"] for i in incrementals], parent
subprocess.run("rm -rf /var/lib/postgresql/backup-work/verified", shell=True, check=True)  # the bench's database
# The restore's target: a restore point after the backups, its segment archived.
psql(f"select pg_create_restore_point('bench-{run}')")
segment = psql("select pg_walfile_name(pg_switch_wal())")
while psql("select last_archived_wal from pg_stat_archiver") < segment:
    time.sleep(1)
scratch = "/var/tmp/bench-restore"
subprocess.run(f"rm -rf {scratch} && install -d -o postgres -m 700 {scratch}", shell=True, check=True)
seconds["restore, ours: files of the full backup alone (download, check, unpack, verify)"] = timed(
    f"runuser -u postgres -- /usr/local/sbin/mcp-base-backup restore {scratch}/full "
    f"--target-lsn {incrementals[0]['record']['start_lsn']}")
subprocess.run(f"rm -rf {scratch}/full", shell=True, check=True)
chain_files = f"restore, ours: files of the chain of {len(parent['chain'])} (download, check, unpack, combine, verify)"
seconds[chain_files] = timed(
    f"runuser -u postgres -- /usr/local/sbin/mcp-base-backup restore {scratch}/ours --target-name bench-{run}")
size = int(subprocess.run(f"du -sb {scratch}/ours | cut -f1", shell=True, capture_output=True, text=True).stdout)
started = time.monotonic()
subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/17/bin/pg_ctl", "-D", f"{scratch}/ours", "-w",
                "-t", "1800", "-l", f"{scratch}/log", "-o", f"-p 5436 -k {scratch} -c archive_mode=off", "start"],
               check=True, stdout=subprocess.DEVNULL)
while psql("select pg_is_in_recovery()", port=5436, host=scratch) == "t":
    time.sleep(0.5)
seconds["restore, ours: the chain + replay to the restore point, promote"] = (
    seconds[chain_files] + time.monotonic() - started)
noise = psql("select count(*) from noise", port=5436, host=scratch, db="bench_backup")
subprocess.run(["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/17/bin/pg_ctl", "-D", f"{scratch}/ours", "-m",
                "fast", "stop"], check=True, stdout=subprocess.DEVNULL)
assert int(noise) == noise_rows, noise  # the restored copy holds every random row
os.makedirs(f"{scratch}/raw")
seconds["restore, floor: aws s3 cp, tar -xz"] = timed(f"{aws} {raw} - | tar -xzf - -C {scratch}/raw")
subprocess.run(f"rm -rf {scratch}", shell=True, check=True)
import boto3  # Debian's, as the host programs use
s3 = boto3.client("s3", endpoint_url=config["endpoint_url"], region_name=config["region"],
                  aws_access_key_id=keys["access_key_id"], aws_secret_access_key=keys["secret_access_key"])
stored = sum(v["Size"] for page in s3.get_paginator("list_object_versions").paginate(Bucket=config["bucket"])
             for v in page.get("Versions", []))
print(json.dumps({"seconds": seconds, "settled": settled, "data_bytes": size, "stored_bytes": stored, "full": full,
                  "incrementals": incrementals}))
'''


MOTO_USAGE = ("pid=$(systemctl show --property=MainPID --value moto); echo $(ps -o rss= -p $pid) "
              "$(find /proc/$pid/fd -lname '*(deleted)' -exec stat -L -c %s {} + 2>/dev/null | awk '{s += $1} END {print s + 0}')")


def moto_usage(samples, done):
    """Every 3 s until `done`: (the S3 endpoint's resident bytes, bytes in the unlinked temporary files it keeps
    objects in, bytes free on this machine's disk, which the fleet's hosts share)."""
    while not done.wait(3):
        rss_kib, spooled = on("s3", MOTO_USAGE, timeout=30).stdout.split()
        samples.append((int(rss_kib) * 1024, int(spooled), shutil.disk_usage("/").free))


def main():
    if os.geteuid() != 0:
        sys.exit("bench/backup.py: run as root (it uses the fleet): make bench-backup")
    free = shutil.disk_usage("/").free / 2**30
    if free < NEEDS_FREE_GIB:
        sys.exit(f"bench/backup.py: {free:.0f} GiB free on this machine's disk, which the fleet's hosts and its S3 "
                 f"endpoint share; it needs {NEEDS_FREE_GIB} (`fleet down` and `make local` start from an empty archive)")
    noise_rows = NOISE_GIB * 2**30 // NOISE_ROW
    database = "runuser -u postgres -- psql -qX -d bench_backup"
    on(HOST, "set -e; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq awscli >/dev/null && "
             "runuser -u postgres -- psql -qX -c 'drop database if exists bench_backup' -c 'create database bench_backup' && "
             f"runuser -u postgres -- pgbench -i -s {SCALE} -q bench_backup 2>/dev/null && "
             f"cat > /var/tmp/bench-noise.py <<'PY'\n{NOISE}\nPY\n"
             # Frozen as it is loaded (COPY FREEZE, as pgbench -i loads): otherwise the first vacuum and hint bits
             # (WAL-logged with data checksums) rewrite every page of the fresh load after the full backup, and the
             # next backup copies them all.
             f"{database} -1 -c 'create table noise (id int primary key, payload bytea storage external)' "
             f"-c \"copy noise from program 'python3 /var/tmp/bench-noise.py 0 {noise_rows}' with (freeze)\" && "
             f"{database} -c 'vacuum (freeze, analyze) noise' -c 'checkpoint'",
       timeout=2400)
    run = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    usage, done = [], threading.Event()
    sampler = threading.Thread(target=moto_usage, args=(usage, done), daemon=True)
    sampler.start()
    on(HOST, f"systemctl stop {TIMERS}", timeout=60)  # a nightly run during the bench would share its cores and disk
    try:
        runner = f"python3 - {run} {noise_rows} {TRANSACTIONS} '{json.dumps(REWRITTEN)}' <<'PY'\n{RUNNER}\nPY"
        measured = json.loads(on(HOST, runner, timeout=5400).stdout.strip().splitlines()[-1])
    finally:
        done.set()
        on(HOST, f"systemctl start {TIMERS}", timeout=60)
        on(HOST, "runuser -u postgres -- psql -qX -c 'drop database if exists bench_backup'; "
                 "rm -f /var/tmp/bench-noise.py", timeout=120)
    sampler.join()
    report(measured, usage)


def report(measured, usage):
    seconds, full, incrementals = measured["seconds"], measured["full"], measured["incrementals"]
    full_s = seconds["backup, ours: full"]
    rows = []
    for kind, baseline in (("backup", "backup, floor: tar, gzip -1, aws s3 cp"), ("restore", "restore, floor: aws s3 cp, tar -xz")):
        for name, value in seconds.items():
            if name.startswith(kind):
                rows.append(f"| {name} | {value:.1f} | {value / seconds[baseline]:.2f}x |")
    backups = [("full", None, full_s, full)] + [(i["name"][len("backup, ours: "):], i["changed"], seconds[i["name"]],
                                                 i["record"]) for i in incrementals]
    table = [f"| {kind} | {'' if changed is None else f'{changed:.1%}'} | {took:.1f} | {took / full_s:.2f}x | "
             f"{record['size_bytes'] / 2**20:.0f} | "
             f"{record['size_bytes'] / full['size_bytes']:.2f}x | "
             f"{', '.join(f'{step} {value:g}' for step, value in record['durations_s'].items())} |"
             for kind, changed, took, record in backups]
    RESULTS.joinpath("backup.md").write_text(f"""# Base backups, full and incremental, and restores

Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench-backup` on
{platform.node()}: {os.cpu_count()} cores, kernel {platform.release()}. On `{HOST}` (a fleet host sharing the
machine's cores; its backup timers stopped for the run), to the fleet's S3 endpoint (moto on `s3`) with the archive's
keys and SSE-KMS. The database: a `pgbench -i -s {SCALE}` one and {NOISE_GIB} GiB of random bytes (incompressible),
a data directory of {measured['data_bytes'] / 2**30:.2f} GiB restored. Between two backups, a day's writes
shortened: {TRANSACTIONS} of pgbench's TPC-B transactions, then a share of the accounts updated and the same share of
the random rows replaced by new random bytes ({", ".join(f"{r:.1%}" for r in REWRITTEN)} on the days in turn), then a
vacuum. How much of the database each day changed is read from PostgreSQL's WAL summaries (blocks changed since
the backup before, over the databases' blocks). One run each; ratios against the raw floor, and the full backup,
in the same run.

| what | seconds | vs floor |
|---|---|---|
{chr(10).join(rows)}

Each backup against the full one (bytes: the packed archive uploaded; steps in seconds, from the backup's record;
an incremental backup's pg_verifybackup includes verifying its chain: pg_combinebackup and pg_verifybackup of the
combined copy, with the earlier links downloaded and unpacked from S3, or onto the copy the backup before kept,
its files the backup rebuilds checked against that copy's manifest first):

| backup | blocks changed | seconds | vs full | MiB uploaded | vs full | steps |
|---|---|---|---|---|---|---|
{chr(10).join(table)}

Before each incremental backup, the bench first did what the hours between a day's writes and the nightly timer
do, timed apart: a checkpoint, and the WAL summarizer caught up with the day's WAL (pg_basebackup --incremental
waits for it). That took {", ".join(f"{s:.1f}" for s in measured["settled"])} s.

The S3 endpoint (moto) keeps an object in memory only up to its key buffer's size (5 MiB by default), and larger
ones in temporary files it unlinks at once, on the s3 host's disk: this machine's disk, which every fleet host
shares. Sampled every 3 s in this run: moto's resident size peaked at {max(u[0] for u in usage) / 2**30:.1f} GiB, its
temporary files at {max(u[1] for u in usage) / 2**30:.1f} GiB, {max(u[1] for u in usage) / measured['stored_bytes']:.2f}x
the {measured['stored_bytes'] / 2**30:.1f} GiB of objects the bucket held at the end (every version: the run's WAL,
the backups and the floor's copy, all locked for the bucket's lock), and the disk had
{min(u[2] for u in usage) / 2**30:.1f} GiB free at the lowest. So what limits the database the fleet can back up
here is that disk: three copies of the database on the members, the archive in moto's files, the backup's work
directory and a restore's copy.

Ours does more than the floor: a consistent copy (pg_basebackup with its WAL), pg_verifybackup, a SHA-256
read back from S3 and a completion record; the restore checks the SHA-256 and runs pg_verifybackup before the
copy becomes a data directory, then replays the archive to the target (every random row there, counted). The
floor copies a live data directory, which may not restore at all.
""")
    plot(seconds, backups, full)
    print(RESULTS.joinpath("backup.md").read_text())


def plot(seconds, backups, full):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(seconds)
    figure, (bars, ratios) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [3, 2]})
    bars.barh(names, [seconds[n] for n in names], color=["#0077bb" if "ours" in n else "#888888" for n in names])
    bars.invert_yaxis()
    bars.set_xlabel("seconds (one run)")
    bars.set_title("Base backups and restores, ours and the raw floor")
    changed = [100 * c for _, c, _, _ in backups[1:]]
    ratios.scatter(changed, [took / backups[0][2] for _, _, took, _ in backups[1:]], label="time vs the full backup")
    ratios.scatter(changed, [r["size_bytes"] / full["size_bytes"] for *_, r in backups[1:]], marker="s",
                   label="bytes uploaded vs the full backup")
    for kind, c, took, _ in backups[1:]:
        ratios.annotate(kind.split(",")[0], (100 * c, took / backups[0][2]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ratios.axhline(0.3, color="#cc3311", linestyle="--", linewidth=1, label="issue 21's target, 0.3x")
    ratios.set_xlabel("blocks the day changed (% of the database, WAL summaries)")
    ratios.set_ylabel("incremental backup / full backup")
    ratios.set_xlim(left=0)
    ratios.set_ylim(bottom=0)
    ratios.legend(fontsize=8)
    ratios.set_title("Incremental backups by the size of the change")
    figure.tight_layout()
    figure.savefig(RESULTS / "backup.png", dpi=100)


if __name__ == "__main__":
    main()
