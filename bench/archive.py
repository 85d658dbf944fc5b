"""WAL archiving throughput on the fleet. Writes bench/results/archive.md.

The same real segments (written by `pgbench -i` on the primary), pushed one after another as PostgreSQL's archiver
does, to the fleet's S3 endpoint with the archive's keys and KMS encryption, by:
  - `aws s3 cp` per segment: the assessment's archive_command (the baseline),
  - `barman-cloud-wal-archive` per segment (Debian's barman-cli-cloud),
  - our archiver with no uploader running (a boto3 start per segment),
  - our archiver handing off to its resident uploader (what the deploy runs).
Each method writes under its own prefix of bench-<run>/. Needs the fleet up and deployed (`make local`); leaves
nothing running. Run as root: `make bench-archive`.
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
SEGMENTS = 20
RESULTS = Path(__file__).resolve().parent / "results" / "archive.md"

# Runs on the primary as root: times each method over the same files, prints one JSON line.
RUNNER = r'''
import json, os, subprocess, sys, time
run, files = sys.argv[1], sorted(os.listdir("/var/tmp/bench-wal"))
config = json.load(open("/etc/mcp-portal/wal-archive.json"))
keys = json.load(open(config["credentials_file"]))
env = dict(os.environ, AWS_ACCESS_KEY_ID=keys["access_key_id"], AWS_SECRET_ACCESS_KEY=keys["secret_access_key"],
           AWS_DEFAULT_REGION=config["region"])
bucket, url, kms = config["bucket"], config["endpoint_url"], config["kms_key_id"]
program = "/usr/local/sbin/mcp-wal-archive"

def ours(name, socket):
    path = f"/var/tmp/bench-{name}.json"
    json.dump(dict(config, prefix=f"bench-{run}/{name}", socket=socket), open(path, "w"))
    os.chmod(path, 0o644)
    return lambda f: ["runuser", "-u", "postgres", "--", "env", f"MCP_WAL_ARCHIVE_CONFIG={path}", program, "push",
                      f"/var/tmp/bench-wal/{f}", f]

methods = {
    "aws s3 cp": lambda f: ["aws", "--endpoint-url", url, "s3", "cp", "--only-show-errors", "--sse", "aws:kms",
                            "--sse-kms-key-id", kms, f"/var/tmp/bench-wal/{f}", f"s3://{bucket}/bench-{run}/aws/{f}"],
    "barman-cloud-wal-archive": lambda f: ["barman-cloud-wal-archive", "--endpoint-url", url, "--encryption", "aws:kms",
                                           "--sse-kms-key-id", kms, f"s3://{bucket}/bench-{run}/barman", "fleet",
                                           f"/var/tmp/bench-wal/{f}"],
    "ours, no uploader": ours("inprocess", "/nonexistent"),
    "ours, resident uploader": ours("uploader", "/var/tmp/bench-uploader.sock"),
}
uploader = subprocess.Popen(["runuser", "-u", "postgres", "--", "env", "MCP_WAL_ARCHIVE_CONFIG=/var/tmp/bench-uploader.json",
                             program, "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
while not os.path.exists("/var/tmp/bench-uploader.sock"):
    time.sleep(0.1)
results, failed = {}, {}
try:
    for name, command in methods.items():
        started = time.monotonic()
        try:
            for f in files:
                subprocess.run(command(f), env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        except subprocess.CalledProcessError as exc:  # said in the table, not a reason to lose the other figures
            failed[name] = (exc.stderr.strip().splitlines() or [f"exit {exc.returncode}"])[-1][-300:]
            continue
        results[name] = time.monotonic() - started
finally:
    os.killpg(uploader.pid, 9)  # runuser and the uploader it started
print(json.dumps({"segments": len(files), "bytes": sum(os.path.getsize(f"/var/tmp/bench-wal/{f}") for f in files),
                  "seconds": results, "failed": failed}))
'''


def main():
    if os.geteuid() != 0:
        sys.exit("bench/archive.py: run as root (it uses the fleet): make bench-archive")
    real_segments(HOST, SEGMENTS, scale=30)
    run = time.strftime("%Y%m%dT%H%M%S")
    measured = json.loads(on(HOST, f"python3 - {run} <<'PY'\n{RUNNER}\nPY", timeout=3600).stdout.strip().splitlines()[-1])
    on(HOST, "rm -rf /var/tmp/bench-wal /var/tmp/bench-*.json", timeout=60)
    baseline = measured["seconds"]["aws s3 cp"]
    rows = "\n".join([f"| {name} | {seconds:.1f} | {measured['segments'] / seconds:.2f} | {baseline / seconds:.2f}x |"
                      for name, seconds in measured["seconds"].items()]
                     + [f"| {name} | failed: {why} | | |" for name, why in measured["failed"].items()])
    RESULTS.write_text(f"""# WAL archiving throughput

Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench-archive` on
{platform.node()}: {os.cpu_count()} cores, kernel {platform.release()}. On `{HOST}` (a fleet host sharing the
machine's cores), to the fleet's S3 endpoint (moto on `s3`), with the archive's keys and SSE-KMS for every
method. The same {measured['segments']} real segments, the most recently written after `pgbench -i -s 30` ({measured['bytes'] / 2**20:.0f} MiB),
one after another, as PostgreSQL's archiver calls archive_command. Ours compresses (gzip level 1, its
default); barman and `aws s3 cp` upload as is (their defaults).

| method | seconds | segments/s | vs `aws s3 cp` |
|---|---|---|---|
{rows}
""")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
