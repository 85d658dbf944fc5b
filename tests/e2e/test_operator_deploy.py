"""A deploy as prod runs one (and as the deploy tiers run all of theirs with MCP_E2E_AS_OPERATOR=1): an unprivileged SSH user (`deploy`, the fleet makes it as inventory/prod.py expects)
that becomes root through sudo. While the deploy writes secrets again, a watcher on every host, running as an
unprivileged user, reads every file it can where a secret could pass (temporary directories, the directories the
secrets land in, the operator's home), over and over; afterwards it reads the whole filesystem once. It must
never see a secret. And the deploy converges, then changes nothing, as it does as root."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from fleet.access import OPERATOR
from fleet.layout import Layout
from hostside import layout
from tests.e2e.test_deploy import REPO, changed_operations, grand_total, pyinfra_argv
from tests.fleet_helpers import on

HOSTS = ("pg-1", "pg-2", "pg-3", "pgbouncer-1", "pgbouncer-2")
# Secrets this deploy must write again on each kind of host (removed first).
REWRITTEN = {
    "pg": [layout.config("wal-archiver.json"), layout.config("backup-retention.json"), layout.config("exporter-web.yml")],
    "pgbouncer": [layout.config("heartbeat.pgpass"), layout.config("exporter-web.yml")],
}
WATCHED = ["/tmp", "/var/tmp", "/dev/shm", f"/home/{OPERATOR}", layout.CONFIG_DIR, layout.TLS_DIR, "/etc/pgbouncer",
           "/etc/patroni", "/etc/postgresql/17/main", "/var/lib/postgresql", "/run"]
# Runs as nobody: the secrets to look for arrive on stdin; each hit is one line on stdout (a root-owned file).
# `watch SECONDS DIR...` reads the files directly in DIR... and every process's command line, over and over;
# `sweep` reads every file of the filesystem once.
WATCHER = """
import glob, os, signal, sys, time
scans = 0
def stop(*_):
    print(f'scans {scans}', flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
secrets = [line.strip().encode() for line in sys.stdin if line.strip()]
def look(path):
    try:
        with open(path, 'rb') as f:
            data = f.read(1 << 20)
    except OSError:
        return
    for secret in secrets:
        if secret in data:
            print(path, flush=True)
def scan(top, deep):
    try:
        entries = list(os.scandir(top))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False):
                look(entry.path)
            elif deep and entry.is_dir(follow_symlinks=False) and entry.path not in ('/proc', '/sys', '/dev'):
                scan(entry.path, deep)
        except OSError:
            pass
if sys.argv[1] == 'watch':
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        for top in sys.argv[3:]:
            scan(top, False)
        for cmdline in glob.glob('/proc/[0-9]*/cmdline'):
            look(cmdline)
        scans += 1
        time.sleep(0.005)
else:
    scan('/', True)
"""
SCRIPT = "/run/secret-watch.py"


def secrets():
    """Every secret of the local environment, as the watchers look for it: passwords, S3 secret keys, a line of
    each TLS private key."""
    found = [p.read_text().strip() for p in Path(REPO, ".secrets/local/passwords").iterdir()]
    found += [json.loads(p.read_text())["secret_access_key"] for p in (Layout().local / "s3").glob("*.json")
              if "secret_access_key" in p.read_text()]
    found += [p.read_text().splitlines()[1] for p in Path(REPO, ".secrets/local/tls").glob("*.key")]
    assert len(found) > 10
    return "\n".join(found) + "\n"


def kind(host):
    return "pgbouncer" if host.startswith("pgbouncer") else "pg"


def as_operator(*args):
    return subprocess.run(pyinfra_argv("-y", "inventory/local.py", "deploy.py", *args, as_operator=True), cwd=REPO,
                          capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def watched_deploy():
    """The operator's deploy, with a watcher on every host for as long as it runs: (its result, hits per host)."""
    for host in HOSTS:
        on(host, f"rm -f {' '.join(REWRITTEN[kind(host)])} && cat > {SCRIPT}", input_text=WATCHER)
        # The secrets reach the watcher on an inherited stdin: root opens the file, which goes at once.
        on(host, "umask 077 && cat > /run/secret-watch.in && (runuser -u nobody -- python3 "
                 f"{SCRIPT} watch 600 {' '.join(WATCHED)} < /run/secret-watch.in > /run/secret-watch.out 2>&1 &) && "
                 "sleep 0.5 && rm /run/secret-watch.in", input_text=secrets())
    try:
        # A control: a secret in a file anyone may read, for a moment. The watcher must see it.
        on(HOSTS[0], "umask 022 && cat > /tmp/control-leak && sleep 0.3 && rm /tmp/control-leak",
           input_text=secrets().splitlines()[0])
        result = as_operator()
    finally:
        for host in HOSTS:
            on(host, f"pkill -u nobody -f {SCRIPT}", check=False)
    time.sleep(0.5)
    reports = {host: on(host, "cat /run/secret-watch.out; rm -f /run/secret-watch.out").stdout.splitlines()
               for host in HOSTS}
    for host, lines in reports.items():  # each watcher ran to the end, scanning many times
        assert lines and lines[-1].startswith("scans ") and int(lines[-1].split()[1]) > 100, f"{host}: {lines}"
    return result, {host: set(lines[:-1]) for host, lines in reports.items()}


def test_the_operators_deploy_writes_the_secrets_again_and_no_other_user_sees_one(watched_deploy):
    result, hits = watched_deploy
    assert result.returncode == 0, result.stderr[-3000:]
    assert hits == {host: ({"/tmp/control-leak"} if host == HOSTS[0] else set()) for host in HOSTS}
    for host in HOSTS:
        for path in REWRITTEN[kind(host)]:
            assert on(host, f"stat -c %a {path}").stdout.strip() in ("600", "640")


def test_after_the_operators_deploy_no_file_another_user_can_read_holds_a_secret(watched_deploy):
    for host in HOSTS:
        swept = on(host, f"runuser -u nobody -- python3 {SCRIPT} sweep", input_text=secrets(), timeout=300)
        assert swept.stdout == "", f"{host}: readable by nobody: {swept.stdout}"


def test_a_second_deploy_as_the_operator_changes_nothing(watched_deploy):
    output = as_operator()
    assert output.returncode == 0, output.stderr[-3000:]
    hosts, changed, errors, unchanged = grand_total(output.stdout + output.stderr)
    assert (changed, errors) == (0, 0), changed_operations(output.stdout + output.stderr)
