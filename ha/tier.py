"""The tier as the inventory describes it, reached the way a deploy reaches it: pyinfra's connectors, host data
and sudo, one command at a time, so each step can wait on the last one's result."""

import json
import subprocess
import sys
from pathlib import Path

from deploys.knobs import knobs
from deploys.replication import slot_name
from hostside import layout

REPO = Path(__file__).resolve().parent.parent
DATABASE_GROUPS = ("primary", "replicas")
NODE_SQL = (
    "select json_build_object('in_recovery', pg_is_in_recovery(), "
    "'system_identifier', (select system_identifier::text from pg_control_system()), "
    "'receive_lsn', pg_last_wal_receive_lsn()::text, 'replay_lsn', pg_last_wal_replay_lsn()::text, "
    "'current_lsn', (case when pg_is_in_recovery() then null else pg_current_wal_lsn() end)::text, "
    "'streaming', (select status = 'streaming' from pg_stat_wal_receiver))")


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
    def primary(self):
        return self.group("primary")[0]

    @property
    def database_hosts(self):
        return [n for g in DATABASE_GROUPS for n in self.group(g)]

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

    def psql(self, name, sql, timeout=60):
        cluster = f"{self.data(name, 'postgres_major')}/{self.data(name, 'postgres_cluster')}"
        return self.run(name, f"runuser -u postgres -- psql --cluster {cluster} -XtAq -v ON_ERROR_STOP=1 -c \"{sql}\"",
                        timeout=timeout)[1]

    def node(self, name):
        """The cluster's state ({} when down or unreachable): recovery, system identifier, LSNs, streaming."""
        try:
            return json.loads(self.psql(name, NODE_SQL, timeout=15) or "{}")
        except Refused:
            return {}

    def pgbouncer_command(self, name, command):
        """Shell for a command on the PgBouncer admin console, as its own OS user over the local socket (no password)."""
        port = self.data(name, "pgbouncer_port")
        return f"runuser -u postgres -- psql -h {layout.SOCKET_DIR} -p {port} -U pgbouncer pgbouncer -XtAq -c '{command}'"

    def pgbouncer(self, name, command, timeout=60):
        return self.run(name, self.pgbouncer_command(name, command), timeout=timeout)[1]

    def pgbouncer_rows(self, name, command):
        """A SHOW command's rows as dicts."""
        header, *rows = self.run(name, self.pgbouncer_command(name, command).replace("-XtAq", "-XAq"))[1].splitlines()
        return [dict(zip(header.split("|"), row.split("|"))) for row in rows if "|" in row]

    def ensure_slots(self, primary, for_hosts):
        """A physical slot on `primary` for each of `for_hosts` (PostgreSQL does not carry slots over a promotion)."""
        for name in for_hosts:
            slot = slot_name(name)
            self.psql(primary, f"select pg_create_physical_replication_slot('{slot}', true) where not exists "
                               f"(select 1 from pg_replication_slots where slot_name = '{slot}')")

    def deploy(self, *limit):
        """`pyinfra -y INVENTORY deploy.py` (limited to `limit` hosts or groups when given), output shown."""
        args = [str(Path(sys.executable).with_name("pyinfra")), "-y", self.inventory_path, "deploy.py"]
        for target in limit:
            args += ["--limit", target]
        say(f"running {' '.join(args[1:])}")
        result = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
            raise Refused("the deploy failed:\n  " + "\n  ".join(tail))
        return result.stdout
