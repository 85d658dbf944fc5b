"""PgBouncer fan-in on the fleet: 1,000 clients through PgBouncer against 25 and against as many direct clients as
max_connections leaves, TLS as deployed. Writes bench/results/pgbouncer.md and pgbouncer.png.

pgbench runs on this machine (the fleet's clients have no other place; it shares the 2 cores with PgBouncer and
PostgreSQL, as the CPU columns show). One transaction = BEGIN, portal.set_tenant(a bench user), that user's
configs, END: the app's pattern, as portal_app, sslmode=verify-full against the tier's CA. For the direct runs the
bench deploys once with `postgres_hba_extra` letting portal_app in from this machine, and PgBouncer's
max_client_conn raised to 1,100 (its 1,000 default counts the heartbeat and the exporter too); the last step
deploys the fleet back to its group_data. Bench users (`@bench.fanin`) are deleted at the end.
Needs the fleet up and deployed (`make local`). Run as root: `make bench-pgbouncer`.
"""

import datetime
import glob
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from remote import leader, on

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
PRIMARY, POOLER = leader(), "pgbouncer-1"
POOLERS = {"pgbouncer-1": "198.51.100.21", "pgbouncer-2": "198.51.100.22"}
LEADER_ADDRESS = {"pg-1": "198.51.100.11", "pg-2": "198.51.100.12", "pg-3": "198.51.100.13"}[PRIMARY]
# Two entries beside the tier's on POOLER, for the routing's baseline and reference: straight to the leader's address
# with nothing following the leader (the path before failover), and through HAProxy's leader listener (the path before
# mcp-follow-leader).
STATIC_ENTRY, HAPROXY_ENTRY = "portal_static", "portal_haproxy"
HOP_TARGET = 0.95  # following the leader may cost at most 5% of the TPS through PgBouncer
USERS, SECONDS = 10_000, 30
TARGET = 0.8
CONTROL_ADDRESS = "198.51.100.1/32"  # the fleet bridge: where this machine's connections come from
SCRIPT = r"""\set n random(1, {users})
BEGIN;
SELECT portal.set_tenant(('00000000-0000-4000-8000-' || lpad(to_hex(:n), 12, '0'))::uuid);
SELECT id, server_id, enabled, container_state FROM portal.user_server_configs WHERE user_id = (SELECT portal.tenant());
END;
"""
DATA = f"""
insert into portal.users (id, azure_oid, email)
  select ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'fanin-' || g, 'u' || g || '@bench.fanin'
    from generate_series(1, {USERS}) g on conflict do nothing;
insert into portal.mcp_servers (name, display_name) select 'fanin-' || g, 'Fan-in ' || g from generate_series(1, 10) g
  on conflict do nothing;
insert into portal.user_server_configs (user_id, server_id)
  select u.id, s.id from portal.users u cross join portal.mcp_servers s
   where u.email like '%@bench.fanin' and s.name like 'fanin-%' on conflict do nothing;
analyze portal.users; analyze portal.user_server_configs;
"""
CLEANUP = """
delete from portal.user_server_configs where user_id in (select id from portal.users where email like '%@bench.fanin');
delete from portal.users where email like '%@bench.fanin';
delete from portal.mcp_servers where name like 'fanin-%';
"""


def deploy(*data):
    argv = [str(REPO / ".venv/bin/pyinfra"), "-y", "inventory/local.py", "deploy.py"]
    for item in data:
        argv += ["--data", item]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        sys.exit(f"bench/pgbouncer.py: deploy failed: {(done.stdout + done.stderr)[-2000:]}")


def psql(sql):
    return on(PRIMARY, f"runuser -u postgres -- psql -d portal -XAtq -v ON_ERROR_STOP=1 <<'SQL'\n{sql}\nSQL",
              timeout=600).stdout.strip()


def cpu_ticks():
    """CPU ticks so far of PgBouncer and of PostgreSQL (every host's: they share this kernel), counting exited
    backends through their postmaster's children's times; and the machine's busy ticks. pgbench, a child of this
    process, is counted by getrusage."""
    stats = {}
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = open(path).read()
        except OSError:  # exited meanwhile
            continue
        fields = text[text.rindex(")") + 2:].split()
        stats[int(path.split("/")[2])] = (text[text.index("(") + 1:text.rindex(")")], int(fields[1]),
                                          [int(v) for v in fields[11:15]])
    by_name = {"pgbouncer": 0, "postgres": 0}
    for name, parent, (utime, stime, cutime, cstime) in stats.values():
        if name in by_name:
            top = stats.get(parent, ("",))[0] != name  # a postmaster: its waited-for children count too
            by_name[name] += utime + stime + (cutime + cstime if top else 0)
    cpu = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    return by_name, sum(cpu) - cpu[3] - cpu[4]


def children_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def direct_capacity():
    """Direct clients max_connections leaves: free client slots, less the PgBouncer hosts' room to grow (62 each:
    both entries' caps and the auth lookup's), less 5."""
    return int(psql(f"""
        select current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int
             - current_setting('reserved_connections')::int
             - (select count(*) from pg_stat_activity where backend_type = 'client backend')
             - {62 * len(POOLERS)} + (select count(*) from pg_stat_activity
                                        where host(client_addr) in ({", ".join(f"'{a}'" for a in POOLERS.values())})) - 5"""))


def add_entries():
    """STATIC_ENTRY and HAPROXY_ENTRY in POOLER's pgbouncer.ini; the deploy at the end removes them."""
    entries = (f"{STATIC_ENTRY} = host={LEADER_ADDRESS} port=5432 dbname=portal\\n"
               f"{HAPROXY_ENTRY} = host=127.0.0.1 port=5000 dbname=portal\\n")
    on(POOLER, "python3 - <<'PY'\nfrom pathlib import Path\nini = Path('/etc/pgbouncer/pgbouncer.ini')\n"
               f"ini.write_text(ini.read_text().replace('[databases]\\n', '[databases]\\n{entries}', 1))\nPY\n"
               "systemctl reload pgbouncer", timeout=60)


def run(label, host, port, clients, work, database="portal"):
    env = dict(os.environ, PGPASSWORD=(REPO / ".secrets/local/passwords/portal_app").read_text().strip(),
               PGSSLMODE="verify-full", PGSSLROOTCERT=str(REPO / ".secrets/local/tls/ca.crt"))
    logs = work / label.replace(" ", "-")
    logs.mkdir()
    script = work / "tx.sql"
    script.write_text(SCRIPT.format(users=USERS))
    print(f"{label}: {clients} clients, {SECONDS} s", flush=True)
    before, pgbench_before, started = cpu_ticks(), children_seconds(), time.monotonic()
    done = subprocess.run(["pgbench", "-n", "-h", host, "-p", str(port), "-U", "portal_app", "-c", str(clients),
                           "-j", "2", "-T", str(SECONDS), "-f", str(script), "-l", "--log-prefix", str(logs / "log"),
                           database], capture_output=True, text=True, env=env, timeout=SECONDS + 600)
    elapsed, after, pgbench_after = time.monotonic() - started, cpu_ticks(), children_seconds()
    if done.returncode:
        sys.exit(f"bench/pgbouncer.py: {label}: pgbench failed: {done.stderr[-2000:]}")
    tps = float(next(line for line in done.stdout.splitlines() if line.startswith("tps")).split()[2])
    failed = next((line for line in done.stdout.splitlines() if "failed" in line), "")
    latencies = sorted(int(line.split()[2]) / 1000 for path in logs.glob("log*") for line in open(path))
    ticks = os.sysconf("SC_CLK_TCK")
    cores = {name: (after[0][name] - before[0][name]) / ticks / elapsed for name in before[0]}
    cores["pgbench"] = (pgbench_after - pgbench_before) / elapsed
    cores["other"] = (after[1] - before[1]) / ticks / elapsed - sum(cores.values())
    return {"label": label, "clients": clients, "tps": tps, "transactions": len(latencies), "failed": failed.strip(),
            "p50": latencies[len(latencies) // 2], "p95": latencies[int(len(latencies) * 0.95)],
            "p99": latencies[int(len(latencies) * 0.99)], "cores": cores}


def main():
    if os.geteuid() != 0:
        sys.exit("bench/pgbouncer.py: run as root (it uses the fleet): make bench-pgbouncer")
    resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))  # pgbench holds a socket per client
    print("deploy: portal_app from this machine (postgres_hba_extra), PgBouncer max_client_conn 1100", flush=True)
    deploy(f'postgres_hba_extra=[{{"database": "portal", "user": "portal_app", "address": "{CONTROL_ADDRESS}"}}]',
           'pgbouncer_pool={"max_client_conn": 1100}')
    work = Path(tempfile.mkdtemp(prefix="bench-pgbouncer-"))
    try:
        print(f"data: {USERS} bench users, 10 configs each", flush=True)
        psql(DATA)
        direct = direct_capacity()
        add_entries()
        runs = [run("25 direct", PRIMARY, 5432, 25, work), run(f"{direct} direct", PRIMARY, 5432, direct, work)]
        for clients in (25, 1000):  # each routing in turn, at the same load
            runs += [run(f"{clients} through PgBouncer", POOLER, 6432, clients, work),
                     run(f"{clients} through PgBouncer, static entry", POOLER, 6432, clients, work, STATIC_ENTRY),
                     run(f"{clients} through PgBouncer and HAProxy", POOLER, 6432, clients, work, HAPROXY_ENTRY)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
        psql(CLEANUP)
        print("deploy: back to group_data", flush=True)
        deploy()
    write(runs)
    print((RESULTS / "pgbouncer.md").read_text())


def write(runs):
    by_label = {r["label"]: r for r in runs}
    base, pooled, hop = by_label["25 direct"], by_label["1000 through PgBouncer"], by_label["25 through PgBouncer"]
    ratio = pooled["tps"] / base["tps"]
    per_core = {r["label"]: r["tps"] / r["cores"]["postgres"] for r in runs}
    rows = [f"| {r['label']} | {r['clients']} | {r['tps']:.0f} | {r['tps'] / base['tps']:.2f}x | "
            f"{per_core[r['label']]:.0f} ({per_core[r['label']] / per_core[base['label']]:.2f}x) | {r['p50']:.1f} | "
            f"{r['p95']:.1f} | {r['p99']:.1f} | " + " | ".join(f"{r['cores'][k]:.2f}" for k in
                                                              ("pgbench", "pgbouncer", "postgres", "other")) + " |"
            for r in runs]
    verdict = "met" if ratio >= TARGET else "MISSED"
    routing, through_haproxy = ({n: by_label[f"{n} through PgBouncer{path}"]["tps"] / by_label[f"{n} through PgBouncer, static entry"]["tps"]
                                 for n in ("25", "1000")} for path in ("", " and HAProxy"))
    routing_verdict = "met" if min(routing.values()) >= HOP_TARGET else "MISSED"
    explanation = "" if ratio >= TARGET else (
        f"Where the time went: PgBouncer in the path, not the fan-in. 25 clients through PgBouncer already reach "
        f"{hop['tps'] / base['tps']:.2f}x; 1,000 clients lose {1 - ratio / (hop['tps'] / base['tps']):.0%} more. PgBouncer "
        f"takes {pooled['cores']['pgbouncer']:.2f} of the machine's {os.cpu_count()} cores (TLS on both of its legs, four "
        f"round trips per transaction), and PostgreSQL gets {pooled['cores']['postgres']:.2f} cores instead of "
        f"{base['cores']['postgres']:.2f}: per PostgreSQL core the pooled run does "
        f"{per_core[pooled['label']] / per_core[base['label']]:.2f}x the direct one's transactions. On hosts of their "
        "own (prod's shape) PgBouncer's CPU is not taken from PostgreSQL's; here all of it shares 2 cores.")
    (RESULTS / "pgbouncer.md").write_text(f"""# PgBouncer fan-in

Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench-pgbouncer` on
{platform.node()}: {os.cpu_count()} cores, kernel {platform.release()}. pgbench {SECONDS} s per row on this machine
(2 threads), as portal_app with TLS verify-full; one transaction = BEGIN, `portal.set_tenant()` of one of
{USERS} bench users, that user's 10 configs, END. PgBouncer: transaction pooling, default_pool_size 25,
max_db_connections 30 (group_data). Latency per transaction from pgbench's log; CPU in cores (of
{os.cpu_count()}) averaged over the run, from /proc (pgbench here, PgBouncer on {POOLER}, PostgreSQL on every
database host; "other": the rest of the machine's busy time).

Target: 1,000 clients through PgBouncer >= {TARGET}x the TPS of 25 direct: {ratio:.2f}x, {verdict}.
{explanation}

Following the leader (the tier's read-write entry, which mcp-follow-leader points at the leader's address,
docs/pgbouncer.md) against a static entry to the same address that follows nothing, in the same run:
{routing["25"]:.2f}x the TPS with 25 clients, {routing["1000"]:.2f}x with 1,000 (target >= {HOP_TARGET}x:
{routing_verdict}). For reference, the path through HAProxy on the PgBouncer host (the previous design):
{through_haproxy["25"]:.2f}x and {through_haproxy["1000"]:.2f}x of the static entry.

| run | clients | TPS | vs 25 direct | TPS per PostgreSQL core (vs 25 direct) | p50 ms | p95 ms | p99 ms | pgbench cores | PgBouncer cores | PostgreSQL cores | other cores |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Failed transactions (pgbench): {"; ".join(f"{r['label']}: {r['failed'] or 'none reported'}" for r in runs)}.
![TPS and latency](pgbouncer.png)
""")
    plot(runs)


def plot(runs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (left, right) = plt.subplots(1, 2, figsize=(15, 4.5))
    labels = [r["label"].replace(" ", "\n", 1) for r in runs]
    left.bar(labels, [r["tps"] for r in runs], color="#4477aa")
    left.set_ylabel("transactions/s")
    left.set_title("Throughput")
    for offset, key in enumerate(("p50", "p95", "p99")):
        right.bar([i + offset * 0.27 for i in range(len(runs))], [r[key] for r in runs], width=0.27, label=key)
    right.set_xticks([i + 0.27 for i in range(len(runs))], labels)
    right.set_ylabel("ms per transaction")
    right.set_yscale("log")
    right.legend()
    right.set_title("Latency")
    figure.tight_layout()
    figure.savefig(RESULTS / "pgbouncer.png", dpi=100)


if __name__ == "__main__":
    main()
