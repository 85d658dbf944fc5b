"""One host: an overlay of the base, its identity files, and the systemd-nspawn process that boots it."""

import functools
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from fleet.cgroup import HostCgroup
from fleet.errors import FleetError
from fleet.system import find_process, run, terminate

NSPAWN_RUNTIME = Path("/run/systemd/nspawn")  # nspawn needs it writable; here it is not until a tmpfs is mounted
POWEROFF_TIMEOUT = 30


class Machine:
    def __init__(self, layout, topology, host):
        self.topology = topology
        self.host = host
        self.dir = layout.state_root / "hosts" / host.name
        self.root = self.dir / "root"

    @functools.cached_property
    def cgroup(self):
        return HostCgroup(self.host.name)

    # -- state ------------------------------------------------------------------------------------------

    def nspawn_pid(self):
        root = str(self.root)
        return find_process(lambda argv: argv[0].endswith("systemd-nspawn") and root in argv)

    @property
    def running(self):
        return self.nspawn_pid() is not None

    def exists(self):
        return self.dir.exists()

    # -- lifecycle --------------------------------------------------------------------------------------

    def mount(self, base):
        """Mount the host's overlay of `base`; refuse an overlay made from another base."""
        recorded = self.dir / "base"
        if recorded.exists() and recorded.read_text() != str(base):
            raise FleetError(
                f"host {self.host.name} was made from {recorded.read_text()}, not the current base {base}; "
                f"run `fleet reset {self.host.name}` (loses its data) or `fleet down`"
            )
        for part in ("upper", "work", "root"):
            (self.dir / part).mkdir(parents=True, exist_ok=True)
        recorded.write_text(str(base))
        if not os.path.ismount(self.root):
            run(["mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={base},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}", str(self.root)])

    def write_identity(self, authorized_key, hosts_file, apt_proxy_url):
        """Files that make this host itself; rewritten before every boot, so they also repair drift."""
        etc = self.root / "etc"
        (etc / "hostname").write_text(f"{self.host.name}\n")
        (etc / "hosts").write_text(hosts_file)
        if not (etc / "machine-id").read_text().strip():
            (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
        key = etc / "ssh" / "ssh_host_ed25519_key"
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{self.host.name}", "-f", str(key)])
        ssh_dir = self.root / "root" / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(authorized_key)
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        (etc / "apt" / "apt.conf.d" / "01fleet-proxy").write_text(f'Acquire::http::Proxy "{apt_proxy_url}";\n')

    def host_public_key(self):
        return (self.root / "etc" / "ssh" / "ssh_host_ed25519_key.pub").read_text().split()[:2]

    def boot(self):
        self.cgroup.remove()  # whatever a killed container left in it
        self.cgroup.create()
        NSPAWN_RUNTIME.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "console.log", "ab")
        subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.root), "--boot", "--register=no", "--keep-unit",
             f"--machine={self.host.name}", f"--network-namespace-path=/run/netns/{self.host.netns}",
             "--console=passive", "--link-journal=no", "--resolv-conf=off", "--timezone=off"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=self.cgroup.enter,  # nspawn makes payload/ and supervisor/ inside the host's own subtree
        )
        log.close()

    def poweroff(self):
        """Clean shutdown: SIGTERM makes nspawn ask the host's systemd to power off."""
        pid = self.nspawn_pid()
        if pid:
            terminate(pid, POWEROFF_TIMEOUT)
        try:
            cgroup = self.cgroup
        except FleetError:
            return  # no usable cgroup layout on this machine: no host of ours ever ran in one
        cgroup.remove()  # a container whose nspawn was killed leaves its processes in it

    def unmount(self):
        if os.path.ismount(self.root):
            run(["umount", str(self.root)])

    def remove(self):
        """Power off, unmount and delete everything of this host (its data included)."""
        self.poweroff()
        self.unmount()
        shutil.rmtree(self.dir, ignore_errors=True)
