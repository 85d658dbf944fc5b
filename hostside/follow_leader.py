"""mcp-follow-leader: on each PgBouncer host, points PgBouncer's read-write entries straight at the leader, so no
proxy sits in the write path (docs/pgbouncer.md has the measurement that asked for it).

The leader is what HAProxy on this host sees: its checks of each member's Patroni (/primary) decide, with the tier's
check interval and fall/rise counts, and `mcp-ha switchover` sets them at once. Every few tenths of a second this
reads HAProxy's statistics; when the [databases] lines PgBouncer includes would change, it rewrites that file
(atomically) and reloads PgBouncer, which closes its server connections to the former host as they are released.
While HAProxy sees no single leader (an election, every member down), the entries go through HAProxy's leader
listener, which refuses connections until one is up. Runs as PgBouncer's user (postgres), not root: under
ProtectSystem=strict it writes only its state directory, and it signals only the pid in PgBouncer's pidfile.
"""

import json
import os
import signal
import socket
import sys
import time

from hostside import files, layout

CONFIG = layout.config("follow-leader.json")


def read_stats(socket_path, timeout=2.0):
    """HAProxy's `show stat`, one dict per row, keyed by the CSV header."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(socket_path)
        conn.sendall(b"show stat\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    lines = b"".join(chunks).decode().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise OSError(f"{socket_path}: not HAProxy's statistics: {lines[:1]}")
    header = lines[0][2:].split(",")
    return [dict(zip(header, line.split(","))) for line in lines[1:] if line]


def leader_of(rows, listener):
    """The one member HAProxy's `listener` sees up, or None. "UP 2/3" is a member going down (its last check failed):
    while the old leader goes down and the new one is already up, the one whose last check passed is the leader.
    HAProxy marks a check in progress with "* " before the last one's status ("* L7OK")."""
    servers = [r for r in rows if r["pxname"] == listener and r["svname"] not in ("FRONTEND", "BACKEND")]
    up = [r for r in servers if r["status"] == "UP"]
    if len(up) != 1:
        up = [r for r in servers if r["status"].startswith("UP") and r.get("check_status", "").lstrip("* ") == "L7OK"]
    return up[0]["svname"] if len(up) == 1 else None


def render(config, leader):
    """The included [databases] lines: every entry to the leader's address, or through HAProxy without one."""
    host, port = config["members"][leader] if leader else config["fallback"]
    why = f"the leader, {leader}" if leader else "no single leader seen: through HAProxy's leader listener"
    lines = [f"; Written by mcp-follow-leader (hostside/follow_leader.py): {why}. Edits are overwritten."]
    for entry in config["entries"]:
        options = f" {entry['options']}" if entry["options"] else ""
        lines.append(f"{entry['name']} = host={host} port={port} dbname={entry['dbname']}{options}")
    return "\n".join(lines) + "\n"


def reload_pgbouncer(pidfile):
    """SIGHUP to PgBouncer (its RELOAD); False when it is not running (it reads the file when it starts)."""
    try:
        with open(pidfile) as f:
            os.kill(int(f.read().strip()), signal.SIGHUP)
        return True
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False


def current(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def notify_ready():
    """Tell systemd the file is in place (Type=notify: PgBouncer is ordered after this unit's start)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if address:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as conn:
            conn.connect("\0" + address[1:] if address.startswith("@") else address)
            conn.sendall(b"READY=1")


def step(config, seen_error):
    """One look at HAProxy and, when the entries move, one rewrite and reload. Returns the error it saw (or None), so a
    lasting one is said once. HAProxy unreadable: the entries stay as they are, except on the first run (no file)."""
    path = config["output"]
    try:
        leader = leader_of(read_stats(config["haproxy_socket"]), config["listener"])
    except OSError as exc:
        first = current(path) is None
        if first:
            files.replace(path, render(config, None), 0o640)
        error = (f"HAProxy's statistics unreadable ({exc}); "
                 f"{'the entries go through HAProxy until it answers' if first else 'the entries stay'}")
        if error != seen_error:
            print(error, flush=True)
        return error
    text = render(config, leader)
    if text != current(path):
        files.replace(path, text, 0o640)
        reloaded = reload_pgbouncer(config["pgbouncer_pidfile"])
        names = ", ".join(e["name"] for e in config["entries"])
        print(f"{names} -> {leader or 'HAProxy (no single leader)'}"
              f"{'; PgBouncer reloaded' if reloaded else '; PgBouncer not running'}", flush=True)
    return None


def main(argv):
    with open(argv[1] if len(argv) > 1 else CONFIG) as f:
        config = json.load(f)
    error = step(config, None)
    notify_ready()
    while True:
        time.sleep(config["interval_s"])
        error = step(config, error)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
