"""restore_command throughput from the archive on the fleet. Writes bench/results/replay.md and replay.png.

The same real segments (written by `pgbench -i` on the primary, renamed to consecutive names on a timeline of
their own), stored under bench-<run>/ in the fleet's S3 endpoint in each tool's layout (ours by its own push),
then fetched one after another as PostgreSQL's startup process calls restore_command (one process per segment,
in a scratch data directory in recovery), by:
  - `aws s3 cp` per segment,
  - `barman-cloud-wal-restore` per segment (Debian's barman-cli-cloud),
  - ours with wal_restore_prefetch = 0: one fetch per process, what the tier did before the prefetcher,
  - ours with the prefetcher at depths 4, 8 (the default) and 16.
What is timed is the fetching only: PostgreSQL's replay of each segment overlaps the prefetcher's downloads,
so a real restore gains less where applying the WAL, not fetching it, is the bottleneck.
Needs the fleet up and deployed (`make local`); leaves nothing running. Run as root: `make bench-replay`.
"""

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from remote import leader, on, real_segments

HOST = leader()
SEGMENTS = 40
DEPTHS = (4, 8, 16)
RESULTS = Path(__file__).resolve().parent / "results" / "replay.md"

# Runs on the primary as root: archives the files once per method, times fetching them back, prints one JSON line.
RUNNER = r'''
import json, os, shutil, subprocess, sys, time
sys.path.insert(0, "/usr/local/lib/mcp-portal")
from hostside.wal_archive import Archive
run, depths = sys.argv[1], [int(d) for d in sys.argv[2].split(",")]
source = "/var/tmp/bench-wal"
files = sorted(os.listdir(source))
config = json.load(open("/etc/mcp-portal/wal-archive.json"))
keys = json.load(open(config["credentials_file"]))
# Keys in the environment, never in argv.
env = dict(os.environ, AWS_ACCESS_KEY_ID=keys["access_key_id"], AWS_SECRET_ACCESS_KEY=keys["secret_access_key"],
           AWS_DEFAULT_REGION=config["region"])
bucket, url = config["bucket"], config["endpoint_url"]
program = "/usr/local/sbin/mcp-wal-archive"
scratch = "/var/tmp/bench-replay"

def ours(depth):
    path = f"/var/tmp/bench-replay-{depth}.json"
    json.dump(dict(config, prefix=f"bench-{run}/ours", prefetch=depth, socket="/nonexistent"), open(path, "w"))
    # The prefetcher lives while this runner does, as it lives while PostgreSQL's startup process does.
    return lambda f: ["env", f"MCP_WAL_ARCHIVE_CONFIG={path}", f"MCP_WAL_PREFETCH_WATCH_PID={os.getpid()}", program,
                      "fetch", f, "pg_wal/RECOVERYXLOG"]

# Archived once per layout. Ours by its own push (gzip, as deployed). The others as they store a segment (as is,
# their defaults), put with the Content-MD5 the bucket's Object Lock requires (barman-cloud-wal-archive and
# `aws s3 cp` send none, and moto refuses their puts into a locked bucket).
plain = Archive(dict(config, prefix=f"bench-{run}"))
for f in files:
    subprocess.run(ours(0)(f)[:3] + [program, "push", f"{source}/{f}", f], check=True, stdout=subprocess.DEVNULL)
    body = open(f"{source}/{f}", "rb").read()
    plain.put_new(f"bench-{run}/aws/{f}", body)
    plain.put_new(f"bench-{run}/barman/fleet/wals/{f[:16]}/{f}", body)

methods = {
    "aws s3 cp": lambda f: ["aws", "--endpoint-url", url, "s3", "cp", "--only-show-errors",
                            f"s3://{bucket}/bench-{run}/aws/{f}", "pg_wal/RECOVERYXLOG"],
    "barman-cloud-wal-restore": lambda f: ["barman-cloud-wal-restore", "--endpoint-url", url,
                                           f"s3://{bucket}/bench-{run}/barman", "fleet", f, "pg_wal/RECOVERYXLOG"],
    "ours, one at a time (prefetch 0)": ours(0),
    **{f"ours, prefetch {d}": ours(d) for d in depths},
}
results, checked, failed = {}, {}, {}
for name, command in methods.items():
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(f"{scratch}/pg_wal")
    open(f"{scratch}/recovery.signal", "w").close()
    started, same = time.monotonic(), 0
    errors = open(f"{scratch}.log", "w+")  # a file, not a pipe: a prefetcher keeps restore_command's stderr open
    try:
        for f in files:
            subprocess.run(command(f), env=env, cwd=scratch, check=True, stdout=subprocess.DEVNULL, stderr=errors)
            same += open(f"{scratch}/pg_wal/RECOVERYXLOG", "rb").read() == open(f"{source}/{f}", "rb").read()
            os.unlink(f"{scratch}/pg_wal/RECOVERYXLOG")  # PostgreSQL replays it and removes it the same way
    except subprocess.CalledProcessError as exc:
        errors.seek(0)
        failed[name] = (errors.read().strip().splitlines() or [f"exit {exc.returncode}"])[-1][-300:]
        continue
    results[name], checked[name] = time.monotonic() - started, same
    os.unlink(f"{scratch}/recovery.signal")  # the restore ends: a prefetcher leaves and removes its spool
    deadline = time.monotonic() + 30
    while os.path.exists(f"{scratch}/pg_wal/mcp-prefetch") and time.monotonic() < deadline:
        time.sleep(0.1)
    if os.path.exists(f"{scratch}/pg_wal/mcp-prefetch"):
        sys.exit(f"{name}: the prefetch spool outlived the restore")
shutil.rmtree(scratch, ignore_errors=True)
os.unlink(f"{scratch}.log")
print(json.dumps({"segments": len(files), "bytes": sum(os.path.getsize(f"{source}/{f}") for f in files),
                  "seconds": results, "identical": checked, "failed": failed}))
'''


def main():
    if os.geteuid() != 0:
        sys.exit("bench/replay.py: run as root (it uses the fleet): make bench-replay")
    real_segments(HOST, SEGMENTS, scale=60, timeline=0x7E)
    run = time.strftime("%Y%m%dT%H%M%S")
    measured = json.loads(on(HOST, f"python3 - {run} {','.join(map(str, DEPTHS))} <<'PY'\n{RUNNER}\nPY",
                             timeout=3600).stdout.strip().splitlines()[-1])
    on(HOST, "rm -rf /var/tmp/bench-wal /var/tmp/bench-replay-*.json", timeout=60)
    wrong = {name: n for name, n in measured["identical"].items() if n != measured["segments"]}
    if wrong:
        sys.exit(f"bench/replay.py: fetched segments differ from the archived ones: {wrong}")
    baseline = measured["seconds"]["ours, one at a time (prefetch 0)"]
    rows = "\n".join([f"| {name} | {seconds:.1f} | {measured['segments'] / seconds:.1f} | {baseline / seconds:.2f}x |"
                      for name, seconds in measured["seconds"].items()]
                     + [f"| {name} | failed: {why} | | |" for name, why in measured["failed"].items()])
    RESULTS.write_text(f"""# restore_command throughput from the archive

Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench-replay` on
{platform.node()}: {os.cpu_count()} cores, kernel {platform.release()}. On `{HOST}` (a fleet host sharing the
machine's cores), from the fleet's S3 endpoint (moto on `s3`), with the archive's keys; SSE-KMS on every object.
The same {measured['segments']} real segments ({measured['bytes'] / 2**20:.0f} MiB, written by `pgbench -i -s 60`), fetched one
after another as PostgreSQL's startup process calls restore_command: one process per segment, in a scratch data
directory in recovery; every fetched segment compared with the archived one (all identical). Only fetching is
timed: in a restore, PostgreSQL applies each segment while the prefetcher downloads the next ones.

| method | seconds | segments/s | vs ours one at a time |
|---|---|---|---|
{rows}

A failed method is listed with its last line. `barman-cloud-wal-restore` (Debian's barman-cli-cloud) is one
process per segment too, against the same endpoint and segments. pgBackRest's `archive-get` is not run: it speaks
only HTTPS to S3, and the fleet's endpoint is plain HTTP.
""")
    plot(measured)
    print(RESULTS.read_text())


def plot(measured):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(measured["seconds"])
    figure, axis = plt.subplots(figsize=(9, 3.5))
    axis.barh(names, [measured["segments"] / measured["seconds"][n] for n in names],
              color=["#0077bb" if n.startswith("ours") else "#888888" for n in names])
    axis.invert_yaxis()
    axis.set_xlabel(f"segments/s ({measured['segments']} segments, one run)")
    axis.set_title("restore_command throughput from the archive")
    figure.tight_layout()
    figure.savefig(RESULTS.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    main()
