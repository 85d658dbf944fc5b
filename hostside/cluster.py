"""This database host's Patroni, through its REST API: what the deploy reads at plan time and how it asks Patroni to
reload, restart or hand over leadership (never behind Patroni's back). The API's address, TLS files and the
credentials for its unsafe endpoints come from Patroni's own configuration (/etc/patroni/<version>-<cluster>.yml,
Debian's patroni@ instance).

    mcp-cluster members                  the cluster as this member sees it (GET /cluster), JSON; {} when Patroni
                                         does not answer (not installed, not started: a first deploy)
    mcp-cluster status                   this member's own state (GET /patroni), JSON: role, state, timeline,
                                         pending_restart, failsafe_mode_is_active, ...; {} when Patroni does not
                                         answer
    mcp-cluster config                   the cluster's dynamic configuration in etcd (GET /config), JSON
    mcp-cluster configure                PATCH the dynamic configuration with the JSON on stdin, when it differs
    mcp-cluster reload                   Patroni re-reads its configuration, and PostgreSQL the deploy's files
                                         (Patroni signals PostgreSQL only when its own configuration changed)
    mcp-cluster restart [--wait-pending S] [--timeout S]
                                         restart PostgreSQL through Patroni (with --wait-pending: once Patroni
                                         flags a pending restart, which it does within its loop after a reload or
                                         a changed dynamic parameter)
    mcp-cluster wait-leader [--timeout S]
                                         until this member holds the leader lock and PostgreSQL accepts writes
    mcp-cluster wait-running [--timeout S]
                                         until PostgreSQL runs here (a replica: streaming)
    mcp-cluster switchover --candidate NAME [--leader NAME]
                                         hand leadership to NAME (POST /switchover); returns when it has it
"""

import argparse
import base64
import glob
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

INSTANCE_CONFIGS = "/etc/patroni/[0-9]*-*.yml"  # Debian's patroni@<version>-<cluster>: one instance per host


class ClusterError(Exception):
    """One line: what Patroni answered or did not."""


class Patroni:
    """The local member's REST API."""

    def __init__(self, config):
        restapi = config["restapi"]
        self.url = f"https://{restapi['connect_address']}"
        self.context = ssl.create_default_context(cafile=restapi["cafile"])
        self.context.load_cert_chain(restapi["certfile"], restapi["keyfile"])  # unsafe endpoints need it
        self.postgres_port = config["postgresql"]["connect_address"].rsplit(":", 1)[1]
        auth = restapi.get("authentication") or {}
        self.auth = base64.b64encode(f"{auth.get('username', '')}:{auth.get('password', '')}".encode()).decode()

    def request(self, method, path, body=None, timeout=30):
        """(status, parsed JSON or text) of one request; a refused connection raises ClusterError."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Authorization": f"Basic {self.auth}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=self.context, timeout=timeout) as response:
                return response.status, _parsed(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _parsed(exc.read())
        except (urllib.error.URLError, OSError) as exc:
            raise ClusterError(f"Patroni's REST API at {self.url} does not answer: {getattr(exc, 'reason', exc)}") from None

    def get(self, path, timeout=10):
        return self.request("GET", path, timeout=timeout)


def _parsed(raw):
    text = raw.decode(errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def config_patch(current, desired):
    """The PATCH that makes the dynamic configuration `current` carry `desired` (nested dicts compare key by key;
    keys `desired` does not name are left alone); {} when nothing differs."""
    patch = {}
    for key, value in desired.items():
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            inner = config_patch(current[key], value)
            if inner:
                patch[key] = inner
        elif current.get(key) != value:
            patch[key] = value
    return patch


def until(check, timeout, what, interval=0.5):
    """Poll `check()` until it returns a true value (returned), or ClusterError saying `what` did not happen; a
    ClusterError from `check` (the API not answering yet) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except ClusterError as exc:  # not answering yet (starting): asked again until the deadline
            result, last = None, exc
        else:
            last = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} within {timeout:g} s" + (f" (last: {last})" if last else ""))
        time.sleep(interval)


def _status(api):
    status, body = api.get("/patroni")
    return body if status == 200 and isinstance(body, dict) else {}


def restart(api, wait_pending, timeout):
    """Restart PostgreSQL through Patroni, once it flags a pending restart when `wait_pending` (seconds) is given;
    returns when PostgreSQL runs again."""
    body = {"timeout": timeout}
    if wait_pending:
        until(lambda: _status(api).get("pending_restart"), wait_pending, "Patroni flagged no pending restart")
        body["restart_pending"] = True
    status, body = api.request("POST", "/restart", body, timeout=timeout + 30)
    if status != 200:
        raise ClusterError(f"restart refused ({status}): {body}")
    return body


def main(argv):
    parser = argparse.ArgumentParser(prog="mcp-cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="Patroni's configuration file (default: this host's one instance's)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("members", "status", "config", "configure", "reload"):
        sub.add_parser(name)
    restart_cmd = sub.add_parser("restart")
    restart_cmd.add_argument("--wait-pending", type=float)
    restart_cmd.add_argument("--timeout", type=int, default=300)
    for name in ("wait-leader", "wait-running"):
        sub.add_parser(name).add_argument("--timeout", type=float, default=300)
    switch = sub.add_parser("switchover")
    switch.add_argument("--candidate", required=True)
    switch.add_argument("--leader")
    args = parser.parse_args(argv[1:])
    configs = [args.config] if args.config else glob.glob(INSTANCE_CONFIGS)
    if len(configs) != 1 or not os.path.exists(configs[0]):
        if args.command in ("members", "status"):  # no Patroni here yet: nothing to tell
            print("{}")
            return 0
        print(f"mcp-cluster: no single Patroni configuration ({args.config or INSTANCE_CONFIGS}): is Patroni configured "
              "on this host?", file=sys.stderr)
        return 1
    import yaml  # Debian's python3-yaml, which Patroni depends on
    with open(configs[0]) as f:
        api = Patroni(yaml.safe_load(f))
    try:
        return COMMANDS[args.command](api, args)
    except ClusterError as exc:
        if args.command in ("members", "status"):
            print("{}")
            return 0
        print(f"mcp-cluster {args.command}: {exc}", file=sys.stderr)
        return 1


def _members(api, args):
    status, body = api.get("/cluster")
    print(json.dumps(body if status == 200 else {}, sort_keys=True))
    return 0


def _status_cmd(api, args):
    print(json.dumps(_status(api), sort_keys=True))
    return 0


def _config(api, args):
    status, body = api.get("/config")
    if status != 200:
        raise ClusterError(f"GET /config answered {status}: {body}")
    print(json.dumps(body, sort_keys=True))
    return 0


def _configure(api, args):
    status, current = api.get("/config")
    if status != 200:
        raise ClusterError(f"GET /config answered {status}: {current}")
    patch = config_patch(current, json.load(sys.stdin))
    if not patch:
        print("the dynamic configuration is as wanted")
        return 0
    status, body = api.request("PATCH", "/config", patch)
    if status != 200:
        raise ClusterError(f"PATCH /config refused ({status}): {body}")
    print(f"dynamic configuration changed: {json.dumps(patch, sort_keys=True)}")
    return 0


def _reload(api, args, run=subprocess.run):
    status, body = api.request("POST", "/reload")
    if status not in (200, 202):
        raise ClusterError(f"reload refused ({status}): {body}")
    print(body)
    # The settings file Patroni's postgresql.conf includes and pg_hba.conf are the deploy's: Patroni does not watch
    # them, and signals PostgreSQL only when its own configuration changed.
    result = run(["runuser", "-u", "postgres", "--", "psql", "-p", api.postgres_port, "-XtAc", "select pg_reload_conf()"],
                 capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterError(f"pg_reload_conf() failed: {result.stderr.strip()}")
    print("PostgreSQL re-read its configuration files")
    return 0


def _restart(api, args):
    print(restart(api, args.wait_pending, args.timeout))
    return 0


def _wait_leader(api, args):
    until(lambda: api.get("/primary")[0] == 200 and _status(api).get("state") == "running", args.timeout,
          "this member did not become the running leader")
    return 0


def _wait_running(api, args):
    until(lambda: _status(api).get("state") == "running" and
          (_status(api).get("role") == "primary" or _status(api).get("replication_state") == "streaming"),
          args.timeout, "PostgreSQL is not running and streaming here")
    return 0


def _switchover(api, args):
    leader = args.leader or next((m["name"] for m in api.get("/cluster")[1].get("members", []) if m["role"] == "leader"), None)
    if not leader:
        raise ClusterError("the cluster has no leader to hand over from")
    status, body = api.request("POST", "/switchover", {"leader": leader, "candidate": args.candidate}, timeout=120)
    if status != 200:
        raise ClusterError(f"switchover refused ({status}): {body}")
    print(body)
    return 0


COMMANDS = {"members": _members, "status": _status_cmd, "config": _config, "configure": _configure, "reload": _reload, "restart": _restart,
            "wait-leader": _wait_leader, "wait-running": _wait_running, "switchover": _switchover}

if __name__ == "__main__":
    sys.exit(main(sys.argv))
