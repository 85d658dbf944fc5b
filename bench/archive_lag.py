"""The WAL archive's lag behind the primary under a write load, over time. Writes bench/results/archive-lag.md
and archive-lag.png.

On the primary: `pgbench` (TPC-B-like, 4 clients, local socket) writes into a scratch database for LOAD_S seconds
with archiving as deployed (archive_command = wal_archive.py push, the resident uploader, SSE-KMS to the fleet's
S3 endpoint); a sampler reads every second: WAL written (pg_current_wal_lsn), the segments waiting to be
archived (.ready files) and how long the oldest has waited, and goes on after the load until the backlog is gone.
Needs the fleet up and deployed (`make local`). Run as root: `make bench-archive-lag`.
"""

import datetime
import json
import os
import platform
import sys
from pathlib import Path

from remote import leader, on

HOST = leader()
LOAD_S, CLIENTS, SCALE = 120, 4, 20
RESULTS = Path(__file__).resolve().parent / "results"

SAMPLER = r'''
import json, subprocess, sys, time
load_s, clients = int(sys.argv[1]), sys.argv[2]
SQL = """select pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
  (select count(*) from pg_ls_archive_statusdir() where name like '%.ready'),
  coalesce((select extract(epoch from now() - min(modification)) from pg_ls_archive_statusdir()
             where name like '%.ready'), 0),
  (select failed_count from pg_stat_archiver)"""
def sample():
    out = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-XAtqF", " ", "-c", SQL], check=True,
                         capture_output=True, text=True).stdout.split()
    return int(out[0]), int(out[1]), float(out[2]), int(out[3])
load = subprocess.Popen(["runuser", "-u", "postgres", "--", "pgbench", "-n", "-c", clients, "-j", "2", "-T", str(load_s),
                         "bench_archive_lag"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
start, samples, load_ended = time.monotonic(), [], None
while True:
    t = time.monotonic() - start
    wal, ready, oldest, failed = sample()
    samples.append({"t": round(t, 1), "wal_bytes": wal, "ready": ready, "oldest_s": round(oldest, 1), "failed": failed,
                    "loading": load.poll() is None})
    if load.poll() is not None and load_ended is None:
        load_ended = t
    if load_ended is not None and ready == 0:
        break
    if t > load_s + 900:
        break
    time.sleep(max(0, 1 - (time.monotonic() - start - t)))
tps = next((l.split()[2] for l in load.stdout.read().splitlines() if l.startswith("tps")), "0")
print(json.dumps({"samples": samples, "load_ended_s": load_ended, "tps": float(tps)}))
'''


def main():
    if os.geteuid() != 0:
        sys.exit("bench/archive_lag.py: run as root (it uses the fleet): make bench-archive-lag")
    print(f"scratch database: pgbench -i -s {SCALE}", flush=True)
    on(HOST, "runuser -u postgres -- psql -qX -c 'drop database if exists bench_archive_lag' "
             f"-c 'create database bench_archive_lag' && runuser -u postgres -- pgbench -i -s {SCALE} -q "
             "bench_archive_lag 2>/dev/null && runuser -u postgres -- psql -qXc 'select pg_switch_wal()' && sleep 20",
       timeout=1200)
    print(f"load: {CLIENTS} clients for {LOAD_S} s, sampling every second until the archive caught up", flush=True)
    try:
        measured = json.loads(on(HOST, f"python3 - {LOAD_S} {CLIENTS} <<'PY'\n{SAMPLER}\nPY",
                                 timeout=LOAD_S + 1200).stdout.strip().splitlines()[-1])
    finally:
        on(HOST, "runuser -u postgres -- psql -qX -c 'drop database if exists bench_archive_lag'", timeout=120)
    write(measured)
    print((RESULTS / "archive-lag.md").read_text())


def write(measured):
    samples = measured["samples"]
    loaded = [s for s in samples if s["loading"]]
    wal_mib = (loaded[-1]["wal_bytes"] - loaded[0]["wal_bytes"]) / 2**20
    seconds = loaded[-1]["t"] - loaded[0]["t"]
    oldest = sorted(s["oldest_s"] for s in loaded)
    caught_up = max(0.0, samples[-1]["t"] - measured["load_ended_s"])
    (RESULTS / "archive-lag.md").write_text(f"""# WAL archive lag under a write load

Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench-archive-lag` on
{platform.node()}: {os.cpu_count()} cores, kernel {platform.release()}. On `{HOST}` (a fleet host sharing the
machine's cores), archiving as deployed to the fleet's S3 endpoint (moto on `s3`, SSE-KMS). pgbench TPC-B-like,
{CLIENTS} clients, {LOAD_S} s, scale {SCALE}, over the local socket; one sample a second.

| | |
|---|---|
| load | {measured['tps']:.0f} TPS, {wal_mib:.0f} MiB of WAL in {seconds:.0f} s ({wal_mib / seconds:.1f} MiB/s, {wal_mib / 16 / seconds:.2f} segments/s) |
| segments waiting (.ready), during the load | median {sorted(s['ready'] for s in loaded)[len(loaded) // 2]}, max {max(s['ready'] for s in loaded)} |
| oldest waiting segment's age, during the load | median {oldest[len(oldest) // 2]:.1f} s, p95 {oldest[int(len(oldest) * 0.95)]:.1f} s, max {oldest[-1]:.1f} s |
| backlog gone after the load ended | {caught_up:.0f} s |
| failed archive attempts during the run | {samples[-1]['failed'] - samples[0]['failed']} |

The lag a point-in-time restore would see is the oldest waiting segment's age plus the segment being written
(closed at the latest by archive_timeout, 300 s, when writes are slow).

![archive lag](archive-lag.png)
""")
    plot(samples, measured["load_ended_s"])


def plot(samples, load_ended):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [s["t"] for s in samples]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    rate = [0] + [(b["wal_bytes"] - a["wal_bytes"]) / 2**20 / max(b["t"] - a["t"], 0.1) for a, b in zip(samples, samples[1:])]
    top.plot(t, rate, color="#888888", label="WAL written, MiB/s")
    top.set_ylabel("MiB/s")
    twin = top.twinx()
    twin.plot(t, [s["ready"] for s in samples], color="#cc3311", label="segments waiting")
    twin.set_ylabel("segments waiting")
    top.legend(loc="upper left")
    twin.legend(loc="upper right")
    bottom.plot(t, [s["oldest_s"] for s in samples], color="#0077bb")
    bottom.set_ylabel("oldest waiting, s")
    bottom.set_xlabel("seconds since the load started")
    for axis in (top, bottom):
        axis.axvline(load_ended, color="black", linestyle=":", linewidth=1)
    top.set_title("WAL archive lag behind the primary (dotted: load ends)")
    figure.tight_layout()
    figure.savefig(RESULTS / "archive-lag.png", dpi=100)


if __name__ == "__main__":
    main()
