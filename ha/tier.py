"""The tier as the inventory describes it, reached the way a deploy reaches it: pyinfra's connectors, host data
and sudo, one command at a time, so each step can wait on the last one's result."""

import json
from pathlib import Path
from shlex import quote

from deploys.knobs import knobs
from hostside import layout

REPO = Path(__file__).resolve().parent.parent
HAPROXY_SOCKET = "/run/haproxy/admin.sock"


class Refused(Exception):
    """One line: why the command changed nothing (or, once it has started, what it left and what to do)."""


def say(message):
    print(f"mcp-ha: {message}", flush=True)


class Tier:
    def __init__(self, inventory_path):
        # pyinfra's CLI patches the standard library for gevent on import, as it does for a deploy
        from pyinfra.api import Config, State
        from pyinfra.context import ctx_inventory, ctx_state
        from pyinfra_cli.inventory import make_inventory

        self.inventory_path = str(Path(inventory_path).resolve())
        state = State(check_for_changes=False)
        state.cwd = str(REPO)
        ctx_state.set(state)
        self.inventory = make_inventory(inventory_path, cwd=str(REPO))
        ctx_inventory.set(self.inventory)
        state.init(self.inventory, Config())
        self.hosts = {h.name: h for h in self.inventory}

    def group(self, name):
        return [h.name for h in self.inventory.get_group(name, [])]

    @property
    def database_hosts(self):
        return self.group("database")

    def data(self, name, key):
        return getattr(knobs(self.hosts[name]), key)

    def reachable(self, name):
        host = self.hosts[name]
        host.connect(show_errors=False)
        return host.connected

    def run(self, name, command, timeout=60, check=True):
        """(ok, stdout) of a shell command on the host, as root (sudo where the inventory says so)."""
        from pyinfra.api.command import StringCommand
        host = self.hosts[name]
        if not self.reachable(name):
            raise Refused(f"{name} is unreachable over ssh")
        try:
            ok, output = host.run_shell_command(StringCommand(command), _sudo=host.data.get("_sudo", False),
                                                _timeout=timeout)
        except TimeoutError:
            if check:
                raise Refused(f"{name}: `{command}` did not finish within {timeout} s") from None
            return False, ""
        if check and not ok:
            raise Refused(f"{name}: `{command}` failed: {output.stderr.strip() or output.stdout.strip()}")
        return ok, output.stdout.strip()

    def members(self):
        """{member: Patroni's view of it} from the first database host whose Patroni answers; {} when none does."""
        for name in self.database_hosts:
            if self.reachable(name):
                found = json.loads(self.run(name, layout.program("cluster") + " members", check=False)[1] or "{}")
                if found.get("members"):
                    return {m["name"]: m for m in found["members"]}
        return {}

    def cluster(self, name, command, timeout=120):
        """mcp-cluster `command` on database host `name` (its Patroni's REST API)."""
        return self.run(name, f"{layout.program('cluster')} {command}", timeout=timeout)[1]

    def pgbouncer(self, name, command, timeout=60):
        """A command on the PgBouncer admin console, as its own OS user over the local socket (no password)."""
        port = self.data(name, "pgbouncer_port")
        return self.run(name, f"runuser -u postgres -- psql -h {layout.SOCKET_DIR} -p {port} -U pgbouncer pgbouncer "
                              f"-XtAq -c {quote(command)}", timeout=timeout)[1]

    def pgbouncer_databases(self, name):
        """{entry: (host, port)} PgBouncer on host `name` connects each entry to now (its SHOW DATABASES)."""
        rows = [row.split("|") for row in self.pgbouncer(name, "SHOW DATABASES").splitlines()]
        return {row[0]: (row[1], row[2]) for row in rows}

    def haproxy(self, name, command):
        """A command on HAProxy's runtime API (its admin socket) on PgBouncer host `name`."""
        return self.run(name, f"echo {quote(command)} | socat stdio {HAPROXY_SOCKET}")[1]

    def haproxy_servers(self, name, listener):
        """{server: status} of an HAProxy listener on PgBouncer host `name` (UP, DOWN, MAINT, ...)."""
        rows = self.haproxy(name, "show stat").splitlines()
        header = rows[0].lstrip("# ").split(",")
        stats = [dict(zip(header, row.split(","))) for row in rows[1:] if row]
        return {s["svname"]: s["status"] for s in stats if s["pxname"] == listener and s["svname"] not in ("FRONTEND", "BACKEND")}
