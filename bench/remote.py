"""What the fleet benchmarks share: a command on a fleet host over the fleet's own ssh settings."""

import json
import subprocess
import sys

from fleet.access import Access
from fleet.layout import Layout


def on(host, command, timeout, stdin=None):
    """`command` on `host` as root; `stdin` (text) on its standard input, the way to pass a secret (never in argv)."""
    result = subprocess.run(Access(Layout()).ssh_argv(host, command), capture_output=True, text=True, timeout=timeout,
                            input=stdin)
    if result.returncode != 0:
        sys.exit(f"{sys.argv[0]}: {host}: {result.stderr.strip()[-2000:]}")
    return result


def leader():
    """The database host Patroni says leads now (the benchmarks run on it)."""
    from fleet.topology import load
    for member in (h.name for h in load().group("database")):
        found = subprocess.run(Access(Layout()).ssh_argv(member, "/usr/local/sbin/mcp-cluster members"),
                               capture_output=True, text=True, timeout=60).stdout.strip()
        if found and found != "{}":
            return next(m["name"] for m in json.loads(found)["members"] if m["role"] == "leader")
    sys.exit(f"{sys.argv[0]}: no Patroni member answers: is the fleet up and deployed (make local)?")


def real_segments(host, count, scale, timeline=None):
    """`count` real WAL segments in /var/tmp/bench-wal on `host` (owned by postgres), the most recently written
    after `pgbench -i -s scale` in a scratch database, the current one excepted; with `timeline`, renamed to
    consecutive names on it (for a reader that goes by name). Installs the other tools the benchmarks compare."""
    target = f"$(printf '%08X00000000%08X' {timeline} $((n + 1)))" if timeline else '"$f"'
    script = f"""set -e
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq awscli barman-cli-cloud >/dev/null
runuser -u postgres -- psql -qX -c 'drop database if exists bench_wal' -c 'create database bench_wal'
runuser -u postgres -- pgbench -i -s {scale} -q bench_wal 2>/dev/null
rm -rf /var/tmp/bench-wal && mkdir /var/tmp/bench-wal
cd /var/lib/postgresql/17/main/pg_wal
current=$(runuser -u postgres -- psql -XtAc 'select pg_walfile_name(pg_current_wal_lsn())')
n=0  # recycled segments keep their older mtime and bytes: real WAL too
for f in $(ls -t | grep -E '^[0-9A-F]{{24}}$' | grep -v "$current" | head -n {count}); do
  cp "$f" /var/tmp/bench-wal/{target}; n=$((n + 1))
done
chown -R postgres: /var/tmp/bench-wal
runuser -u postgres -- psql -qX -c 'drop database bench_wal'
ls /var/tmp/bench-wal | wc -l
"""
    copied = int(on(host, script, timeout=1200).stdout.split()[-1])
    if copied < count:
        sys.exit(f"{sys.argv[0]}: only {copied} closed segments in {host}'s pg_wal; expected {count}")
