"""Failover on the fleet: what the portal's clients see when the leader is lost, per fault and timing profile: the
fleet's fast one (group_data/local.py), the tier's defaults (deploys/knobs.py) and Patroni's own defaults, the
reference the tier's were chosen against. Writes bench/results/failover.md, from bench/results/failover.json, where
each profile keeps the figures of its last run (`--profile NAME` measures one again; by default all).

Each round, under a 4-client write load through both PgBouncer hosts (tests/drills/load.py): a planned switchover
(the baseline: the clients are held, not failed), the leader's PostgreSQL killed (Patroni restarts it in place),
the leader's host stopped (Patroni elects another; the host is started again and rejoins), the leader cut off the
network (it demotes itself; healed, it rejoins). RTO: the longest time no commit was acknowledged; RPO: acknowledged
rows the leader afterwards lacks. Figures are medians and maxima over the rounds, and ratios to the switchover's RTO
in the same profile's run. Needs the fleet up and deployed (`make local`). Run as root: `make bench-failover`.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.drills.load import CREATE, WriteLoad  # noqa: E402
from tests.drills.test_drills import TTL_S, healthy, lose_the_leader, mcp_ha, pick_replica, present, sql  # noqa: E402
from tests.fleet_helpers import fleet, on  # noqa: E402

RESULTS = REPO / "bench" / "results"
# name -> (the deploy's --data over group_data/local.py, the profile by its values); primary_start_timeout is 300 s
# in all of them: a killed PostgreSQL restarts in place.
PROFILES = {
    "fast (the fleet's)": ([], "ttl 20 s, loop_wait 5 s, retry_timeout 5 s; HAProxy checks every 1,000 ms, fall 2, "
                               "rise 1"),
    "the tier's defaults": (["patroni_ttl=25", "patroni_loop_wait=5", "patroni_retry_timeout=10",
                             "haproxy_check_interval_ms=1000", "haproxy_check_fall=3", "haproxy_check_rise=1"],
                            "ttl 25 s, loop_wait 5 s, retry_timeout 10 s; HAProxy checks every 1,000 ms, fall 3, rise 1"),
    "Patroni's defaults": (["patroni_ttl=30", "patroni_loop_wait=10", "patroni_retry_timeout=10",
                            "haproxy_check_interval_ms=2000", "haproxy_check_fall=3", "haproxy_check_rise=2"],
                           "ttl 30 s, loop_wait 10 s, retry_timeout 10 s; HAProxy checks every 2,000 ms, fall 3, rise 2"),
}
FAULTS = ("switchover", "PostgreSQL killed", "host stopped", "network cut")


def deploy(data):
    argv = [str(REPO / ".venv/bin/pyinfra"), "-y", "inventory/local.py", "deploy.py"]
    for item in data:
        argv += ["--data", item]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        sys.exit(f"bench/failover.py: deploy failed:\n{result.stderr[-3000:]}")


def measure(fault):
    """(RTO seconds, rows lost, rejoin seconds or None) of one fault under load."""
    with WriteLoad() as load:
        if fault in ("host stopped", "network cut"):
            old, new, started = lose_the_leader("stop" if fault == "host stopped" else "cut", load)
        else:
            old = healthy()
            load.wait_for(300)
            started = time.time()
            if fault == "switchover":
                mcp_ha("switchover", "inventory/local.py", "--to", pick_replica(old))
            else:
                on(old, "kill -KILL $(head -1 /var/lib/postgresql/17/main/postmaster.pid)")
            load.more(200)
            new = healthy()
        acknowledged = load.stop()
    lost = len(set(acknowledged) - present(new, acknowledged))
    rejoin = None
    if fault in ("host stopped", "network cut"):
        back = time.time()
        fleet("start" if fault == "host stopped" else "heal", old)
        healthy(new, timeout=300)
        rejoin = time.time() - back
    return load.outage(started), lost, rejoin


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="append", choices=PROFILES, help="measure only this profile (repeatable)")
    args = parser.parse_args()
    stored = RESULTS / "failover.json"
    results = json.loads(stored.read_text()) if stored.exists() else {}
    try:
        for profile in args.profile or PROFILES:
            print(f"bench/failover.py: {profile}: deploying", flush=True)
            deploy(PROFILES[profile][0])
            sql(healthy(), CREATE)
            runs = {fault: [] for fault in FAULTS}
            for round_ in range(args.rounds):
                for fault in FAULTS:
                    figures = measure(fault)
                    runs[fault].append(figures)
                    print(f"bench/failover.py: {profile}, round {round_ + 1}: {fault}: RTO {figures[0]:.1f} s, "
                          f"{figures[1]} rows lost" + (f", rejoined in {figures[2]:.0f} s" if figures[2] else ""),
                          flush=True)
            results[profile] = {"measured": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                "machine": f"{platform.node()}: {os.cpu_count()} cores, kernel {platform.release()}",
                                "runs": runs}
            RESULTS.mkdir(exist_ok=True)
            stored.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        deploy([])  # the fleet's own profile again
    write({profile: results[profile] for profile in PROFILES if profile in results})


def write(results):
    lines = ["""# Failover: what the clients see (bench/failover.py)

The local fleet (three database hosts under Patroni 4.0.7 with etcd 3.5 on the same hosts, two PgBouncer hosts with
HAProxy 3.0), a 4-client write load through both PgBouncer hosts. RTO: the longest time no commit was acknowledged
after the fault; RPO: acknowledged rows the leader afterwards lacks (asynchronous replication). p50 and max over the
rounds; the ratio is to the planned switchover's RTO in the same profile's run (clients held by PgBouncer, none
failed).
"""]
    lines += [f"- {profile}: {PROFILES[profile][1]}; primary_start_timeout 300 s. Measured {result['measured']} on "
              f"{result['machine']}, {len(result['runs'][FAULTS[0]])} rounds." for profile, result in results.items()]
    lines.append("""
| profile | fault | RTO p50 (s) | RTO max (s) | p50 / switchover | RTO (each round, s) | rows lost (each round) | rejoined after (s) |
|---|---|---|---|---|---|---|---|""")
    for profile, result in results.items():
        runs = result["runs"]
        baseline = statistics.median(r[0] for r in runs["switchover"])
        for fault in FAULTS:
            figures = runs[fault]
            rto = statistics.median(r[0] for r in figures)
            rejoins = [f"{r[2]:.0f}" for r in figures if r[2] is not None]
            lines.append(f"| {profile} | {fault} | {rto:.1f} | {max(r[0] for r in figures):.1f} | {rto / baseline:.1f} | "
                         f"{', '.join(f'{r[0]:.1f}' for r in figures)} | {', '.join(str(r[1]) for r in figures)} | "
                         f"{', '.join(rejoins) or '-'} |")
    lines.append(f"""
What bounds each: a switchover is Patroni's clean handover (the old leader's shutdown checkpoint replayed by the
target) plus HAProxy told at once and each PgBouncer's entry moved (mcp-follow-leader) before PgBouncer resumes; a
killed PostgreSQL is Patroni's next loop (loop_wait) plus crash recovery; a stopped host is a clean power-off (`fleet
stop`), in which Patroni stops and releases the leader lock, so a replica is elected at once, plus HAProxy's checks
(inter x rise) to see it and the follower's move; a cut leader cannot release the lock: its expiry (ttl after the
last renewal) plus the same (the cut leader demotes itself before the lock expires). TTL on the fleet: {TTL_S} s.

![RTO per fault and profile](failover.png)
""")
    plot(results)
    (RESULTS / "failover.md").write_text("\n".join(lines))
    print(f"bench/failover.py: wrote {RESULTS / 'failover.md'}")


def plot(results):
    """Each round's RTO per fault, one series per profile (bench/results/failover.png)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(10, 4.5))
    width = 0.6 / len(results)
    for n, (profile, result) in enumerate(results.items()):
        offset = (n - (len(results) - 1) / 2) * width
        for i, fault in enumerate(FAULTS):
            rtos = [r[0] for r in result["runs"][fault]]
            axes.scatter([i + offset] * len(rtos), rtos, color=f"C{n}", label=profile if i == 0 else None)
    axes.set_xticks(range(len(FAULTS)), FAULTS)
    axes.set_ylabel("RTO: longest time with no acknowledged commit (s)")
    axes.axhline(10, color="grey", linestyle=":", label="CNPG's e2e bound (10 s)")
    axes.axhline(30, color="grey", linestyle="--", label="target for a lost or cut host, default profile (30 s)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "failover.png", dpi=100)


if __name__ == "__main__":
    main()
