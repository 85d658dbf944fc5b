"""How the control machine and the tools reach the hosts: a key pair, ssh_config, pinned host keys, /etc/hosts."""

import subprocess
import time
from pathlib import Path

from fleet.errors import FleetError
from fleet.system import run

HOSTS_BEGIN = "# BEGIN mcp-fleet (managed by `fleet`; removed by `fleet down`)"
HOSTS_END = "# END mcp-fleet"
OPERATOR = "deploy"  # inventory/prod.py's ssh_user


class Access:
    def __init__(self, layout):
        self.dir = layout.local
        self.key = self.dir / "id_ed25519"
        self.config = self.dir / "ssh_config"
        self.known_hosts = self.dir / "known_hosts"

    def ensure_key(self):
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mcp-fleet-control", "-f", str(self.key)])
        return self.key.with_suffix(".pub").read_text()

    def write_client_files(self, topology, host_keys):
        """ssh_config and known_hosts for ssh, pyinfra and testinfra: strict host key checking, our key only."""
        self.known_hosts.write_text(
            "".join(f"{h.name},{h.address} {' '.join(host_keys[h.name])}\n" for h in topology.hosts if h.name in host_keys)
        )
        names = " ".join(h.name for h in topology.hosts)
        self.config.write_text(
            "".join(f"Host {h.name}\n  HostName {h.address}\n" for h in topology.hosts)
            + f"\nHost {names}\n  User root\n  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
            "  ConnectTimeout 3\n  ServerAliveInterval 5\n  ServerAliveCountMax 2\n  LogLevel ERROR\n"
        )

    def ssh_argv(self, host_name, command=None, tty=False):
        if not self.config.exists():
            raise FleetError("the fleet is not up (no ssh_config in .fleet/); run `fleet up`")
        return ["ssh", "-F", str(self.config)] + (["-t"] if tty else []) + [host_name] + ([command] if command else [])

    def run(self, host_name, command, timeout=60, check=True, input_text=None):
        return run(self.ssh_argv(host_name, command), timeout=timeout, check=check, input=input_text)

    def answers(self, host_name, timeout=5):
        try:
            return subprocess.run(self.ssh_argv(host_name, "true"), capture_output=True, timeout=timeout).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ensure_operator(self, host_name, authorized_key):
        """The user prod's deploys log in as (inventory/prod.py): unprivileged, root only through sudo, with the
        fleet's key. `pyinfra --user deploy --sudo ...` deploys the fleet as prod is deployed."""
        self.run(host_name,
                 f"id -u {OPERATOR} >/dev/null 2>&1 || useradd --create-home --shell /bin/bash {OPERATOR}; "
                 f"install -d -m 700 -o {OPERATOR} -g {OPERATOR} /home/{OPERATOR}/.ssh && "
                 f"install -m 600 -o {OPERATOR} -g {OPERATOR} /dev/stdin /home/{OPERATOR}/.ssh/authorized_keys && "
                 f"echo '{OPERATOR} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/{OPERATOR} && "
                 f"chmod 440 /etc/sudoers.d/{OPERATOR}", input_text=authorized_key)

    def wait_booted(self, host_name, timeout=90):
        """Until ssh answers and systemd says the boot finished; a host that boots degraded is an error."""
        deadline = time.monotonic() + timeout
        while not self.answers(host_name):
            if time.monotonic() > deadline:
                raise FleetError(f"host {host_name} did not answer ssh within {timeout}s; see its console.log under the fleet state dir")
            time.sleep(0.5)
        state = self.run(host_name, "systemctl is-system-running --wait", timeout=timeout, check=False).stdout.strip()
        if state != "running":
            failed = self._failed_units(host_name)
            why = self.run(host_name, f"journalctl -b -n 1 --no-pager -o cat -u {failed[0]}", check=False).stdout.strip() if failed else ""
            raise FleetError(f"host {host_name} booted {state!r}: {', '.join(failed) or '?'} failed ({why or 'no log'}); see `fleet ssh {host_name} systemctl --failed`")

    def _failed_units(self, host_name):
        return [line.split()[0] for line in self.run(host_name, "systemctl --failed --no-legend --plain", check=False).stdout.splitlines()]

    def clear(self):
        for path in (self.config, self.known_hosts):
            path.unlink(missing_ok=True)


def hosts_block(topology):
    lines = [f"{topology.gateway}\tfleet-gateway"] + [f"{h.address}\t{h.name}" for h in topology.hosts]
    return "\n".join([HOSTS_BEGIN, *lines, HOSTS_END]) + "\n"


def host_etc_hosts(topology):
    """/etc/hosts inside every host: every fleet name (its own included), so nothing waits on a DNS lookup."""
    return "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\n" + hosts_block(topology)


def replace_block(text, block):
    """`text` with our managed block replaced by `block` (or removed when block is empty)."""
    kept, inside = [], False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == HOSTS_BEGIN:
            inside = True
        elif inside and line.rstrip("\n") == HOSTS_END:
            inside = False
        elif not inside:
            kept.append(line)
    body = "".join(kept)
    if body and not body.endswith("\n"):
        body += "\n"
    return body + block


def update_machine_hosts(block, path=Path("/etc/hosts")):
    text = path.read_text() if path.exists() else ""
    new = replace_block(text, block)
    if new != text:
        path.write_text(new)  # in place: keeps the file's inode and mode (it may be bind-mounted)
