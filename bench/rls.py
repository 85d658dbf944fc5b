"""Row-level security cost on the fleet, side by side on the same data. Writes bench/results/rls.md.

In a scratch database on the primary, made by the portal's own migrations (sqitch, as the deploy does): 100k
users, 1M user_server_configs (10 servers each), 1M audit rows. The assessment's three query shapes (a user's
configs; configs joined to servers; the dashboard aggregate), each with the app's own `user_id` filter and
relying on RLS alone, as portal_app over the local socket, pgbench with 2 clients; one transaction = set the
tenant + one query. Five policy variants on user_server_configs, swapped between runs:
  - no RLS (the baseline: the app's filter alone);
  - the assessment's "current": `user_id = current_setting(...)::uuid OR is_admin(current_setting(...)::uuid)`;
  - the same policy over the setting portal.set_tenant() writes, the tenant set by it ("current, checked"): the
    same work per transaction as ours but for the policy, so the two policies compare alone (app filter only:
    relying on RLS alone it is the naive policy's seq scan again);
  - the assessment's "optimized": `(SELECT get_current_user_id())` validating per statement, `OR (SELECT is_admin(...))`;
  - ours (sql/): portal.set_tenant() validating once and writing a setting only it can write (extension/
    portal_tenant), `user_id = portal.tenant()`, admins by role.
Every variant runs REPETITIONS times (--repetitions), shape by shape and filter by filter with the variants back to
back (each cell and repetition starting at the next variant); reports the median p50/p95 latency per transaction
with the spread of p50, the server's CPU time per transaction (the backends' schedstat), the ratio to no RLS, ours
against the naive policy repetition by repetition, and the plan of each RLS-only query. A profile then times each
step of a transaction inside one backend (each call repeated PROFILE_CALLS times): the module's calls against the
first design's plpgsql (a context bound to the transaction's start time only, which the app could forge).
`--protocol prepared` runs pgbench with prepared statements, so each transaction leaves planning out
(bench/results/rls-prepared.md; the simple protocol's go to rls.md). There the tenant's id reaches the query as a
parameter, as an app's would: the statement that sets the tenant returns it (`\\gset`). With the simple protocol
the query names it as `bench_uid(n)`, a constant to the planner.
Every run's figures go beside the table (rls.json, rls-prepared.json).
Needs the fleet up and deployed (`make local`); drops its database. Run as root: `make bench-rls`.
"""

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

from remote import leader, on

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from deploys.schema import sqitch_command  # noqa: E402

HOST = leader()
DATABASE = "bench_rls"
USERS, SERVERS_PER_USER, AUDIT_ROWS = 100_000, 10, 1_000_000
SECONDS = 6
REPETITIONS = 5
PROFILE_CALLS = 20_000
RESULTS = Path(__file__).resolve().parent / "results" / "rls.md"
PASSWORD_FILE = "/var/tmp/bench-rls-password"  # portal_app's, root's alone while the bench runs (never in argv)
REPO = Path(__file__).resolve().parents[1]

DATA = f"""
create function public.bench_uid(n int) returns uuid language sql immutable
  as $$ select ('00000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid $$;
grant execute on function public.bench_uid(int) to portal_app;
insert into portal.users (id, azure_oid, email) select bench_uid(g), 'oid-' || g, 'u' || g || '@bench.test'
  from generate_series(1, {USERS}) g;
insert into portal.mcp_servers (name, display_name) select 'srv-' || g, 'Server ' || g from generate_series(1, 20) g;
insert into portal.user_server_configs (user_id, server_id, enabled, container_state)
  select bench_uid(u), s.id, (u + s.n) % 3 <> 0, case when (u + s.n) % 4 = 0 then 'running' else 'stopped' end
    from generate_series(1, {USERS}) u
    cross join (select id, row_number() over (order by name) n from portal.mcp_servers) s
   where s.n <= {SERVERS_PER_USER};
insert into portal.audit_logs (logged_at, user_id, action)
  select date_trunc('month', now()) + (g % 1000) * interval '1 minute', bench_uid(1 + g % {USERS}), 'login'
    from generate_series(1, {AUDIT_ROWS}) g;
-- The assessment's functions, as it wrote them (get_current_user_id validates on every call).
create function public.get_current_user_id() returns uuid language plpgsql stable security definer as $$
declare user_id_text text; user_uuid uuid;
begin
  user_id_text := current_setting('app.current_user_id', true);
  if user_id_text !~ '^[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}$' then
    raise exception 'Invalid user ID format';
  end if;
  user_uuid := user_id_text::uuid;
  if not exists (select 1 from portal.users where id = user_uuid and is_active) then
    raise exception 'User not found or inactive';
  end if;
  return user_uuid;
end $$;
create function public.is_admin(user_uuid uuid) returns boolean language sql stable security definer as $$
  select role in ('super_admin', 'team_admin') from portal.users where id = user_uuid $$;
alter function public.get_current_user_id() owner to portal_definer;
alter function public.is_admin(uuid) owner to portal_definer;
grant execute on function public.get_current_user_id(), public.is_admin(uuid) to portal_app;
analyze;
"""

# Each step of a transaction, timed inside one backend (as postgres). "before" is the first design's pair, copied
# here: a context bound to the transaction's start time, which any role could write.
PROFILE = f"""
create function public.tenant_before() returns uuid language plpgsql stable set search_path = pg_catalog, pg_temp as $$
declare context text := current_setting('portal.tenant', true);
begin
  if split_part(context, '/', 1) is distinct from extract(epoch from now())::text then raise exception 'not set'; end if;
  return split_part(context, '/', 2)::uuid;
end $$;
create function public.set_tenant_before(user_id uuid) returns uuid language plpgsql volatile security definer
  set search_path = pg_catalog, pg_temp as $$
begin
  if not exists (select 1 from portal.users u where u.id = set_tenant_before.user_id and u.is_active) then
    raise exception 'no active user';
  end if;
  perform set_config('portal.tenant', extract(epoch from now())::text || '/' || user_id::text, true);
  return user_id;
end $$;
alter function public.set_tenant_before(uuid) owner to portal_definer;
create function public.profile(calls int) returns table (step text, us numeric) language plpgsql as $$
declare
  started timestamptz; u uuid := bench_uid(1); ignored uuid;
  steps text[] := array['set_config (the no-RLS variant''s tenant)', 'the active-user check alone, in SQL',
                        'set_tenant(), before', 'set_tenant(), the module', 'tenant(), before', 'tenant(), the module',
                        'set_config, a random user each call', 'set_tenant(), the module, a random user each call'];
begin
  for s in 1..array_length(steps, 1) loop
    if s = 5 then perform set_tenant_before(u); elsif s = 6 then perform portal.set_tenant(u); end if;
    started := clock_timestamp();
    for i in 1..calls loop
      case s
        when 1 then perform set_config('app.current_user_id', u::text, true);
        when 2 then perform 1 from portal.users where id = u and is_active;
        when 3 then perform set_tenant_before(u);
        when 4 then perform portal.set_tenant(u);
        when 5 then ignored := tenant_before();
        when 6 then ignored := portal.tenant();
        when 7 then perform set_config('app.current_user_id', bench_uid(1 + (i * 7919) % {USERS})::text, true);
        else perform portal.set_tenant(bench_uid(1 + (i * 7919) % {USERS}));
      end case;
    end loop;
    step := steps[s];
    us := round((extract(epoch from clock_timestamp() - started) * 1e6 / calls)::numeric, 2);
    return next;
  end loop;
end $$;
"""


def shapes_profile():
    """SQL: profile_shapes(calls, module), run as portal_app under each variant's policies: per shape, `calls`
    transactions' worth of work inside one backend (set the tenant, the query with the app's filter), us per
    transaction. Without the client, the protocol and pgbench, what is left is the server's cost of each design."""
    blocks = "".join(f"""
  shape := {shape!r};
  for pass in 1..2 loop  -- the first pass reads the pages in; the second, timed, finds them in shared buffers
    started := clock_timestamp();
    for i in 1..calls loop
      u := bench_uid(1 + (i * 7919) % {USERS});
      if module then perform portal.set_tenant(u); else perform set_config('app.current_user_id', u::text, true); end if;
      perform {query.removeprefix("select ").format(filter="user_id = u")};
    end loop;
  end loop;
  us := round((extract(epoch from clock_timestamp() - started) * 1e6 / calls)::numeric, 2);
  return next;""" for shape, query in SHAPES.items())
    return f"""
create function public.profile_shapes(calls int, module boolean) returns table (shape text, us numeric)
  language plpgsql as $$
declare started timestamptz; u uuid;
begin{blocks}
end $$;
grant execute on function public.profile_shapes(int, boolean) to portal_app;
"""


OURS = "configs_tenant"
NAIVE, CHECKED = "assessment current", "current, checked"
VARIANTS = {
    "no RLS": ("alter table portal.user_server_configs disable row level security;", "set_config('app.current_user_id', bench_uid(:n)::text, true)"),
    NAIVE: (
        "create policy bench on portal.user_server_configs for all to portal_app using ("
        "user_id = current_setting('app.current_user_id')::uuid or is_admin(current_setting('app.current_user_id')::uuid));",
        "set_config('app.current_user_id', bench_uid(:n)::text, true)"),
    CHECKED: (
        "create policy bench on portal.user_server_configs for all to portal_app using ("
        "user_id = current_setting('portal_tenant.user_id')::uuid "
        "or is_admin(current_setting('portal_tenant.user_id')::uuid));",
        "portal.set_tenant(bench_uid(:n))"),
    "assessment optimized": (
        "create policy bench on portal.user_server_configs for all to portal_app using ("
        "user_id = (select get_current_user_id()) or (select is_admin((select get_current_user_id()))));",
        "set_config('app.current_user_id', bench_uid(:n)::text, true)"),
    "ours": ("", "portal.set_tenant(bench_uid(:n))"),
}
SHAPES = {
    "own configs": "select id, server_id, enabled, container_state from portal.user_server_configs where {filter}",
    "configs join servers": "select c.id, s.name from portal.user_server_configs c join portal.mcp_servers s "
                            "on s.id = c.server_id where c.enabled and {filter}",
    "dashboard aggregate": "select count(*) filter (where enabled), count(*) filter (where container_state = 'running'), "
                           "max(updated_at) from portal.user_server_configs where {filter}",
}
FILTERS = {"app filter": "user_id = {uid}", "RLS alone": "true"}
APP_FILTER_ONLY = {"no RLS", CHECKED}
# How each protocol's transaction names the tenant: its statement setting the tenant, and the id in the app's filter.
TENANT = {"simple": ("SELECT {tenant};", "bench_uid(:n)"), "prepared": ("SELECT ({tenant})::uuid AS u \\gset", ":u")}

# On the primary: each variant's policies in place, pgbench per shape and filter, percentiles from its log.
RUNNER = r'''
import glob, json, os, subprocess, sys, tempfile, time
database, seconds, plan = sys.argv[1], sys.argv[2], json.load(open(sys.argv[4]))
password = open(sys.argv[3]).read().strip()
repetitions, profile_calls, protocol = int(sys.argv[5]), int(sys.argv[6]), sys.argv[7]
env = dict(os.environ, PGPASSWORD=password)

def on_cpu_ns(pids):
    """The processes' time on a CPU so far (ns); None when one has gone."""
    try:
        return sum(int(open(f"/proc/{pid}/schedstat").read().split()[0]) for pid in pids)
    except FileNotFoundError:
        return None

def psql(sql, role="postgres"):
    argv = ["runuser", "-u", "postgres", "--", "psql", "-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql]
    if role != "postgres":
        argv = ["psql", "-h", "/var/run/postgresql", "-U", role, "-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql]
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout.strip()

RESET = ("alter table portal.user_server_configs enable row level security; "
         "drop policy if exists bench on portal.user_server_configs; "
         "alter policy configs_tenant on portal.user_server_configs to portal_app;")

def use(variant):
    """The variant's policies on user_server_configs (ours: the schema's own)."""
    psql(RESET + (f"alter policy configs_tenant on portal.user_server_configs to portal_definer;{variant['setup']}"
                  if variant["setup"] else ""))

def pgbench(repetition, variant, run):
    work = tempfile.mkdtemp(dir="/var/tmp")
    os.chmod(work, 0o777)
    script = os.path.join(work, "tx.sql")
    with open(script, "w") as f:
        f.write(f"\\set n random(1, {run['users']})\nBEGIN;\n{variant['statement']}\n{run['query']};\nEND;\n")
    bench = subprocess.Popen(["runuser", "-u", "postgres", "--", "pgbench", "-n", "-h", "/var/run/postgresql",
                              "-U", "portal_app", "-c", "2", "-j", "2", "-T", seconds, "-M", protocol, "-f", script,
                              "-l", "--log-prefix", os.path.join(work, "log"), database],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=work, env=env)
    # The server's CPU time per transaction: the two backends' on-CPU nanoseconds (schedstat) over a window
    # inside the run, divided by the transactions that ended in it; pgbench, and the time a backend waits for it,
    # are left out.
    time.sleep(1)
    backends = subprocess.run(["pgrep", "-f", f"^postgres: .*portal_app {database} "], capture_output=True,
                              text=True).stdout.split()
    window = [(time.time(), on_cpu_ns(backends))]
    time.sleep(int(seconds) - 2)
    window.append((time.time(), on_cpu_ns(backends)))
    if bench.wait() != 0:
        sys.exit(f"pgbench failed: {bench.stderr.read()[-2000:]}")
    logged = [line.split() for path in glob.glob(os.path.join(work, "log*")) for line in open(path)]
    latencies = sorted(int(fields[2]) for fields in logged)
    (start, cpu_start), (end, cpu_end) = window
    ended = sum(1 for fields in logged if start <= int(fields[4]) + int(fields[5]) / 1e6 <= end)
    measured = ended and backends and None not in (cpu_start, cpu_end)
    server_us = (cpu_end - cpu_start) / 1000 / ended if measured else None
    query = run["query"].replace(":u", "bench_uid(1)").replace(":n", "1")
    explain = psql("begin; select " + variant["tenant"].replace(":n", "1") + "; explain (costs off) "
                   + query + "; rollback;", role="portal_app")
    results.append({"repetition": repetition, "variant": variant["name"], "shape": run["shape"], "filter": run["filter"],
                    "transactions": len(latencies), "server_us": server_us,
                    "p50_ms": latencies[len(latencies) // 2] / 1000, "p95_ms": latencies[int(len(latencies) * 0.95)] / 1000,
                    "plan": " / ".join(line.strip() for line in explain.splitlines() if "Scan" in line)})
    subprocess.run(["rm", "-rf", work])

results, in_backend = [], []
# Cell by cell: the variants of one shape and filter run one after the other, so a drift in the machine's speed (the
# fleet shares its cores) falls on all of them alike. Each cell and repetition starts at the next variant, so none
# is always the one that runs after the others' seq scans.
cells = list(dict.fromkeys((run["shape"], run["filter"]) for variant in plan for run in variant["runs"]))
for repetition in range(repetitions):
    for c, cell in enumerate(cells):
        here = [(variant, run) for variant in plan for run in variant["runs"] if (run["shape"], run["filter"]) == cell]
        turn = (repetition + c) % len(here)
        for variant, run in here[turn:] + here[:turn]:
            use(variant)
            pgbench(repetition, variant, run)
    for i in range(len(plan)):
        variant = plan[(repetition + i) % len(plan)]
        use(variant)
        module = "true" if variant["tenant"].startswith("portal.set_tenant") else "false"
        for line in psql(f"select * from profile_shapes({profile_calls}, {module})", role="portal_app").splitlines():
            shape, us = line.split("|")
            in_backend.append({"repetition": repetition, "variant": variant["name"], "shape": shape, "us": float(us)})
psql(RESET)
profile = [line.split("|") for line in psql(f"select * from profile({profile_calls})").splitlines()]
print(json.dumps({"runs": results, "in_backend": in_backend,
                  "profile": [{"step": step, "us": float(us)} for step, us in profile]}))
'''


def main():
    options = argparse.ArgumentParser(description="Row-level security cost on the fleet (make bench-rls).")
    options.add_argument("--protocol", choices=("simple", "prepared"), default="simple",
                         help="pgbench's query protocol: prepared leaves planning out of each transaction "
                              "(results in rls-prepared.md)")
    options.add_argument("--repetitions", type=int, default=REPETITIONS)
    args = options.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/rls.py: run as root (it uses the fleet): make bench-rls")
    password = (REPO / ".secrets/local/passwords/portal_app").read_text().strip()
    print(f"scratch database {DATABASE}: the portal's migrations, {USERS} users, {USERS * SERVERS_PER_USER} configs, "
          f"{AUDIT_ROWS} audit rows", flush=True)
    on(HOST, f"runuser -u postgres -- psql -qX -c 'drop database if exists {DATABASE} with (force)' "
             f"-c 'create database {DATABASE} owner portal_owner' -c 'grant connect on database {DATABASE} to portal_app'",
       timeout=120)
    on(HOST, sqitch_command("17/main", "portal_owner", "5s", DATABASE, "deploy"), timeout=600)
    on(HOST, f"runuser -u postgres -- psql -d {DATABASE} -qX -v ON_ERROR_STOP=1 "
             f"<<'SQL'\n{DATA}\n{PROFILE}\n{shapes_profile()}\nSQL", timeout=3600)
    statement, uid = TENANT[args.protocol]
    plan = [{"name": name, "setup": setup, "tenant": tenant, "statement": statement.format(tenant=tenant),
             "runs": [{"shape": shape, "filter": label, "users": USERS,
                       "query": query.format(filter=condition.format(uid=uid))}
                      for shape, query in SHAPES.items() for label, condition in FILTERS.items()
                      if not (name in APP_FILTER_ONLY and label == "RLS alone")]}
            for name, (setup, tenant) in VARIANTS.items()]
    print(f"pgbench ({args.protocol}): {args.repetitions} x {sum(len(variant['runs']) for variant in plan)} runs "
          f"({len(VARIANTS)} variants, {len(SHAPES)} shapes, {len(FILTERS)} filters), {SECONDS} s each; then the profile",
          flush=True)
    try:
        on(HOST, f"umask 077 && cat > {PASSWORD_FILE}", timeout=60, stdin=password)
        measured = json.loads(on(HOST, f"cat > /var/tmp/bench-rls-plan.json <<'JSON'\n{json.dumps(plan)}\nJSON\n"
                                       f"python3 - {DATABASE} {SECONDS} {PASSWORD_FILE} /var/tmp/bench-rls-plan.json {args.repetitions} "
                                       f"{PROFILE_CALLS} {args.protocol} <<'PY'\n"
                                       f"{RUNNER}\nPY", timeout=3600).stdout.strip().splitlines()[-1])
    finally:
        on(HOST, f"rm -f {PASSWORD_FILE} /var/tmp/bench-rls-plan.json; runuser -u postgres -- psql -qX "
                 f"-c 'drop database if exists {DATABASE} with (force)'", timeout=120)
    results = write(measured, args.protocol, args.repetitions)
    print(results.read_text())


def median(values):
    values = sorted(values)
    return values[len(values) // 2]


def server_costs(in_backend):
    """The in-backend table's rows, and the verdicts of ours against the naive policy, unchecked and checked, from
    profile_shapes()'s runs."""
    runs = {}
    for r in in_backend:
        runs.setdefault((r["shape"], r["variant"]), []).append(r["us"])
    us = {key: (median(values), min(values), max(values)) for key, values in runs.items()}
    rows = "\n".join(f"| {shape} | {variant} | {m:.2f} ({low:.2f}-{high:.2f}) | {m / us[(shape, 'no RLS')][0]:.2f}x |"
                      for (shape, variant), (m, low, high) in us.items())
    verdicts = []
    for other, label in ((NAIVE, "the naive policy"), (CHECKED, "the naive policy checked by set_tenant()")):
        above = [shape for shape in SHAPES if us[(shape, "ours")][0] >= us[(shape, other)][0]]
        verdicts.append(f"Ours below {label} on every shape." if not above
                        else f"Ours at or above {label}: {'; '.join(above)}.")
    return rows, "\n".join(verdicts)


def paired(runs, other):
    """Ours against another variant, app filter, repetition by repetition (the two ran back to back): per shape and
    measure, the median of the ratios and in how many repetitions ours was below."""
    by = {(r["repetition"], r["variant"], r["shape"]): r for r in runs if r["filter"] == "app filter"}
    lines = []
    for measure, key in (("p50", "p50_ms"), ("server CPU per transaction", "server_us")):
        cells = []
        for shape in SHAPES:
            ratios = [by[(rep, "ours", shape)][key] / theirs[key] for (rep, variant, s), theirs in by.items()
                      if variant == other and s == shape and theirs[key]
                      and (rep, "ours", shape) in by and by[(rep, "ours", shape)][key]]
            if ratios:
                below = sum(1 for ratio in ratios if ratio < 1)
                cells.append(f"{shape} {median(ratios):.2f}x ({below} of {len(ratios)} below)")
        lines.append(f"- {measure}: {'; '.join(cells)}.")
    return "\n".join(lines)


def write(measured, protocol, repetitions):
    """The table of medians over the repetitions (p50 spread: min-max), the verdicts, and the profile; its path."""
    runs = {}
    for r in measured["runs"]:
        runs.setdefault((r["variant"], r["shape"], r["filter"]), []).append(r)
    summary = {key: {"p50": median(r["p50_ms"] for r in rs), "p95": median(r["p95_ms"] for r in rs),
                     "low": min(r["p50_ms"] for r in rs), "high": max(r["p50_ms"] for r in rs),
                     "transactions": sum(r["transactions"] for r in rs), "plan": rs[0]["plan"],
                     "server_us": median(server) if (server := [r["server_us"] for r in rs if r["server_us"]])
                     else None}
               for key, rs in runs.items()}
    baseline = {shape: summary[("no RLS", shape, "app filter")] for shape in SHAPES}
    rows = []
    order = (list(VARIANTS), list(SHAPES), list(FILTERS))
    for (variant, shape, label), m in sorted(summary.items(), key=lambda item: tuple(
            names.index(name) for names, name in zip(order, item[0]))):
        base = baseline[shape]
        server = (f"{m['server_us']:.1f} | {m['server_us'] / base['server_us']:.2f}x"
                  if m["server_us"] and base["server_us"] else "- | -")
        rows.append(f"| {shape} | {label} | {variant} | {m['transactions']} | {m['p50']:.3f} ({m['low']:.3f}-{m['high']:.3f}) | "
                    f"{m['p95']:.3f} | {m['p50'] / base['p50']:.2f}x | {m['p95'] / base['p95']:.2f}x | {server} | {m['plan']} |")
    ours = {key: m for key, m in summary.items() if key[0] == "ours"}
    ratio = {key: m["p50"] / baseline[key[1]]["p50"] for key, m in ours.items()}
    worst = max(ratio, key=ratio.get)

    def at_or_above(other, key):
        """Ours' cells whose median is at or above the other variant's with the app's filter, same shape."""
        theirs = {shape: summary[(other, shape, "app filter")][key] for shape in SHAPES}
        return "; ".join(f"{shape}, {label}" for (_, shape, label), m in ours.items()
                         if None in (m[key], theirs[shape]) or m[key] >= theirs[shape]) or "none"
    pairs, pairs_checked = paired(measured["runs"], NAIVE), paired(measured["runs"], CHECKED)
    profile = "\n".join(f"| {p['step']} | {p['us']:.2f} |" for p in measured["profile"])
    in_backend, server_verdict = server_costs(measured["in_backend"])
    results = RESULTS if protocol == "simple" else RESULTS.with_name("rls-prepared.md")
    results.with_suffix(".json").write_text(json.dumps(measured, indent=1) + "\n")  # every run's figures
    results.write_text(f"""# Row-level security cost ({protocol} protocol)

Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `bench/rls.py --protocol {protocol}` on
{platform.node()}: {os.cpu_count()} cores, kernel {platform.release()}. On `{HOST}` (a fleet host sharing the
machine's cores; postgres_memory_budget_mb 512), in a scratch database made by the portal's migrations:
{USERS} users, {USERS * SERVERS_PER_USER} user_server_configs, {AUDIT_ROWS} audit rows. pgbench as portal_app
over the local socket (`pgbench -M {protocol}`), 2 clients, {SECONDS} s per row, every row {repetitions} times (shape
by shape and filter by filter, the variants back to back, each starting at the next variant); one transaction
= BEGIN, set the tenant, the query, END. p50 and p95 are the medians over the repetitions, with the spread of p50
(min-max). Ratios are against "no RLS" with the app's filter, same shape, same run. The targets: ours <= 1.10x on
every shape, and below the assessment's naive per-row policy ("assessment current", app filter) on every shape.
"current, checked" is that policy over the setting portal.set_tenant() writes, the tenant set by it: every
transaction does the same work as ours but for the policy, so ours against it compares the policies alone.

Worst of ours: {worst[1]}, {worst[2]}: {ratio[worst]:.2f}x at p50{" (target met)" if ratio[worst] <= 1.10 else " (target missed)"}.
Ours at or above the naive policy: {at_or_above(NAIVE, "p50")}.
By the server's CPU time per transaction, ours at or above the naive policy: {at_or_above(NAIVE, "server_us")}.
Ours at or above the naive policy checked by set_tenant(): {at_or_above(CHECKED, "p50")}; by the server's CPU
time: {at_or_above(CHECKED, "server_us")}.
Ours against the naive policy with the app's filter, repetition by repetition (median ratio, and how often ours was
below):
{pairs}

Ours against the naive policy checked by set_tenant() ("current, checked"), the same way:
{pairs_checked}

"server CPU": the two backends' time on a CPU (`/proc/<pid>/schedstat`) from the 2nd second of the run to 1 s before
its end, over the transactions that ended in that window; median over the repetitions ("-": no transaction ended in
it). It counts the backends' own work, their system calls included, and leaves out pgbench and the time a backend
waits for it.

| shape | filter | variant | transactions | p50 ms (spread) | p95 ms | p50 vs no RLS | p95 vs no RLS | server CPU us/tx | server CPU vs no RLS | scans |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

## The server's cost per transaction, inside one backend (app's filter)

Each repetition, after its pgbench rows, each variant in turn: `profile_shapes()` as portal_app under its policies,
{PROFILE_CALLS} transactions' worth of work per shape in one backend (set the tenant, the query with the app's
filter), timed on a second pass over the same users (the first reads their pages in), us per transaction: median over the repetitions (min-max), ratio to no RLS. No client, protocol or
pgbench: what is left is each design's server-side cost (on a machine whose cores the fleet shares, the spread
can still exceed the differences between designs: read it before the medians).

{server_verdict}

| shape | variant | us per transaction (spread) | vs no RLS |
|---|---|---|---|
{in_backend}

## Profile: each step of a transaction, inside one backend ({PROFILE_CALLS} calls each, us per call)

"before" is the first design (a context bound to the transaction's start time only: the app could write one by
hand for any user, a deactivated one included); "the module" is sql/'s (extension/portal_tenant). The steps call
for one user again and again, except the last two, which also make a different user's id each call (the same
work in both): what the user lookup costs when its pages are not the ones just read.

| step | us per call |
|---|---|
{profile}
""")
    return results


if __name__ == "__main__":
    main()
