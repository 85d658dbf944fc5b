"""Row-level security cost on the fleet, side by side on the same data. Writes bench/results/rls.md.

In a scratch database on the primary, made by the portal's own migrations (sqitch, as the deploy does): 100k
users, 1M user_server_configs (10 servers each), 1M audit rows. The assessment's three query shapes (a user's
configs; configs joined to servers; the dashboard aggregate), each with the app's own `user_id` filter and
relying on RLS alone, as portal_app over the local socket, pgbench with 2 clients; one transaction = set the
tenant + one query. Four policy variants on user_server_configs, swapped between runs:
  - no RLS (the baseline: the app's filter alone);
  - the assessment's "current": `user_id = current_setting(...)::uuid OR is_admin(current_setting(...)::uuid)`;
  - the assessment's "optimized": `(SELECT get_current_user_id())` validating per statement, `OR (SELECT is_admin(...))`;
  - ours (sql/): portal.set_tenant() validating once, `user_id = (SELECT portal.tenant())`, admins by role;
  - ours with the tenant set without set_tenant()'s validation (what the validation itself costs).
Reports p50/p95 latency per transaction, the ratio to no RLS, and the plan of each RLS-only query.
Needs the fleet up and deployed (`make local`); drops its database. Run as root: `make bench-rls`.
"""

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
SECONDS = 10
RESULTS = Path(__file__).resolve().parent / "results" / "rls.md"
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

OURS = "configs_tenant"
VARIANTS = {
    "no RLS": ("alter table portal.user_server_configs disable row level security;", "set_config('app.current_user_id', bench_uid(:n)::text, true)"),
    "assessment current": (
        "create policy bench on portal.user_server_configs for all to portal_app using ("
        "user_id = current_setting('app.current_user_id')::uuid or is_admin(current_setting('app.current_user_id')::uuid));",
        "set_config('app.current_user_id', bench_uid(:n)::text, true)"),
    "assessment optimized": (
        "create policy bench on portal.user_server_configs for all to portal_app using ("
        "user_id = (select get_current_user_id()) or (select is_admin((select get_current_user_id()))));",
        "set_config('app.current_user_id', bench_uid(:n)::text, true)"),
    "ours": ("", "portal.set_tenant(bench_uid(:n))"),
    # Our policies with the tenant set as set_tenant() stores it but without its validation: where ours' time goes.
    "ours, tenant not validated": ("", "set_config('portal.tenant', extract(epoch from now())::text || '/' || bench_uid(:n), true)"),
}
SHAPES = {
    "own configs": "select id, server_id, enabled, container_state from portal.user_server_configs where {filter}",
    "configs join servers": "select c.id, s.name from portal.user_server_configs c join portal.mcp_servers s "
                            "on s.id = c.server_id where c.enabled and {filter}",
    "dashboard aggregate": "select count(*) filter (where enabled), count(*) filter (where container_state = 'running'), "
                           "max(updated_at) from portal.user_server_configs where {filter}",
}
FILTERS = {"app filter": "user_id = bench_uid(:n)", "RLS alone": "true"}

# On the primary: each variant's policies in place, pgbench per shape and filter, percentiles from its log.
RUNNER = r'''
import glob, json, os, subprocess, sys, tempfile
database, seconds, password, plan = sys.argv[1], sys.argv[2], sys.argv[3], json.load(open(sys.argv[4]))
env = dict(os.environ, PGPASSWORD=password)

def psql(sql, role="postgres"):
    argv = ["runuser", "-u", "postgres", "--", "psql", "-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql]
    if role != "postgres":
        argv = ["psql", "-h", "/var/run/postgresql", "-U", role, "-d", database, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql]
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout.strip()

results = []
for variant in plan:
    psql("alter table portal.user_server_configs enable row level security; drop policy if exists bench on portal.user_server_configs;"
         "alter policy configs_tenant on portal.user_server_configs to portal_app;")
    if variant["setup"]:
        psql("alter policy configs_tenant on portal.user_server_configs to portal_definer;" + variant["setup"])
    for run in variant["runs"]:
        work = tempfile.mkdtemp(dir="/var/tmp")
        os.chmod(work, 0o777)
        script = os.path.join(work, "tx.sql")
        with open(script, "w") as f:
            f.write(f"\\set n random(1, {run['users']})\nBEGIN;\nSELECT {variant['tenant']};\n{run['query']};\nEND;\n")
        subprocess.run(["runuser", "-u", "postgres", "--", "env", f"PGPASSWORD={password}", "pgbench", "-n", "-h",
                        "/var/run/postgresql", "-U", "portal_app", "-c", "2", "-j", "2", "-T", seconds, "-f", script,
                        "-l", "--log-prefix", os.path.join(work, "log"), database],
                       check=True, capture_output=True, text=True, cwd=work)
        latencies = sorted(int(line.split()[2]) for path in glob.glob(os.path.join(work, "log*"))
                           for line in open(path))
        explain = psql("begin; select " + variant["tenant"].replace(":n", "1") + "; explain (costs off) "
                       + run["query"].replace(":n", "1") + "; rollback;", role="portal_app")
        results.append({"variant": variant["name"], "shape": run["shape"], "filter": run["filter"],
                        "transactions": len(latencies),
                        "p50_ms": latencies[len(latencies) // 2] / 1000, "p95_ms": latencies[int(len(latencies) * 0.95)] / 1000,
                        "plan": " / ".join(line.strip() for line in explain.splitlines() if "Scan" in line)})
        subprocess.run(["rm", "-rf", work])
psql("alter table portal.user_server_configs enable row level security; drop policy if exists bench on portal.user_server_configs;"
     "alter policy configs_tenant on portal.user_server_configs to portal_app;")
print(json.dumps(results))
'''


def main():
    if os.geteuid() != 0:
        sys.exit("bench/rls.py: run as root (it uses the fleet): make bench-rls")
    password = (REPO / ".secrets/local/passwords/portal_app").read_text().strip()
    print(f"scratch database {DATABASE}: the portal's migrations, {USERS} users, {USERS * SERVERS_PER_USER} configs, "
          f"{AUDIT_ROWS} audit rows", flush=True)
    on(HOST, f"runuser -u postgres -- psql -qX -c 'drop database if exists {DATABASE} with (force)' "
             f"-c 'create database {DATABASE} owner portal_owner' -c 'grant connect on database {DATABASE} to portal_app'",
       timeout=120)
    on(HOST, sqitch_command("17/main", "portal_owner", "5s", DATABASE, "deploy"), timeout=600)
    on(HOST, f"runuser -u postgres -- psql -d {DATABASE} -qX -v ON_ERROR_STOP=1 <<'SQL'\n{DATA}\nSQL", timeout=3600)
    plan = [{"name": name, "setup": setup, "tenant": tenant,
             "runs": [{"shape": shape, "filter": label, "users": USERS, "query": query.format(filter=condition)}
                      for shape, query in SHAPES.items() for label, condition in FILTERS.items()
                      if not (name == "no RLS" and label == "RLS alone")]}
            for name, (setup, tenant) in VARIANTS.items()]
    print(f"pgbench: {len(VARIANTS)} variants x {len(SHAPES)} shapes x {len(FILTERS)} filters, {SECONDS} s each", flush=True)
    try:
        measured = json.loads(on(HOST, f"cat > /var/tmp/bench-rls-plan.json <<'JSON'\n{json.dumps(plan)}\nJSON\n"
                                       f"python3 - {DATABASE} {SECONDS} '{password}' /var/tmp/bench-rls-plan.json <<'PY'\n"
                                       f"{RUNNER}\nPY", timeout=3600).stdout.strip().splitlines()[-1])
    finally:
        on(HOST, f"rm -f /var/tmp/bench-rls-plan.json; runuser -u postgres -- psql -qX "
                 f"-c 'drop database if exists {DATABASE} with (force)'", timeout=120)
    write(measured)
    print(RESULTS.read_text())


def write(measured):
    baseline = {r["shape"]: r for r in measured if r["variant"] == "no RLS"}
    rows = []
    for r in measured:
        base = baseline[r["shape"]]
        rows.append(f"| {r['shape']} | {r['filter']} | {r['variant']} | {r['transactions']} | {r['p50_ms']:.3f} | "
                    f"{r['p95_ms']:.3f} | {r['p50_ms'] / base['p50_ms']:.2f}x | {r['p95_ms'] / base['p95_ms']:.2f}x | "
                    f"{r['plan']} |")
    ours = [r for r in measured if r["variant"] == "ours"]
    unvalidated = {(r["shape"], r["filter"]): r for r in measured if r["variant"] == "ours, tenant not validated"}
    validation_us = sorted((r["p50_ms"] - unvalidated[(r["shape"], r["filter"])]["p50_ms"]) * 1000 for r in ours)
    worst = max(ours, key=lambda r: r["p50_ms"] / baseline[r["shape"]]["p50_ms"])
    verdict = worst["p50_ms"] / baseline[worst["shape"]]["p50_ms"]
    RESULTS.write_text(f"""# Row-level security cost

Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `make bench-rls` on
{platform.node()}: {os.cpu_count()} cores, kernel {platform.release()}. On `{HOST}` (a fleet host sharing the
machine's cores; postgres_memory_budget_mb 512), in a scratch database made by the portal's migrations:
{USERS} users, {USERS * SERVERS_PER_USER} user_server_configs, {AUDIT_ROWS} audit rows. pgbench as portal_app
over the local socket, 2 clients, {SECONDS} s per row; one transaction = BEGIN, set the tenant, the query, END.
Ratios are against "no RLS" with the app's filter, same shape, same run. The target: ours <= 1.10x on every shape.

Worst of ours: {worst['shape']}, {worst['filter']}: {verdict:.2f}x at p50{" (target met)" if verdict <= 1.10 else " (target missed)"}.
Where ours' time goes: set_tenant()'s validation (the user exists and is active, once per transaction) costs
{validation_us[len(validation_us) // 2]:.0f} us per transaction at the median of the six rows (ours minus "ours, tenant not validated").

| shape | filter | variant | transactions | p50 ms | p95 ms | p50 vs no RLS | p95 vs no RLS | scans |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}
""")


if __name__ == "__main__":
    main()
