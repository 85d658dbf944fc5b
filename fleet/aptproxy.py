"""apt-cacher-ng on the bridge address: the hosts' only way to Debian's archive, caching every package once."""

import socket
import time

from fleet.errors import FleetError
from fleet.system import alive, run, terminate

PORT = 3142
CACHE_DIR = "/var/cache/apt-cacher-ng"  # kept across `fleet down`, so a later `up` downloads nothing again


class AptProxy:
    def __init__(self, layout, topology):
        self.dir = layout.state_root / "apt-cacher-ng"
        self.topology = topology

    @property
    def url(self):
        return f"http://{self.topology.gateway}:{PORT}"

    @property
    def log(self):
        return self.dir / "log" / "apt-cacher.log"

    def _pid(self):
        try:
            pid = int((self.dir / "pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def _answers(self):
        try:
            socket.create_connection((str(self.topology.gateway), PORT), timeout=1).close()
            return True
        except OSError:
            return False

    def ensure(self):
        if self._pid() and self._answers():
            return
        (self.dir / "conf").mkdir(parents=True, exist_ok=True)
        (self.dir / "log").mkdir(exist_ok=True)
        # No Remap rules: the hosts ask for deb.debian.org URLs and the proxy fetches exactly those
        # (Debian's default remap points at ftp.debian.org, which does not resolve here).
        (self.dir / "conf" / "acng.conf").write_text(
            f"CacheDir: {CACHE_DIR}\n"
            f"LogDir: {self.dir / 'log'}\n"
            "SupportDir: /usr/lib/apt-cacher-ng\n"
            f"Port: {PORT}\n"
            f"BindAddress: {self.topology.gateway}\n"
            f"PidFile: {self.dir / 'pid'}\n"
            "ForeGround: 0\n"
            "UnbufferLogs: 1\n"
            "ExThreshold: 4\n"
        )
        run(["mkdir", "-p", CACHE_DIR])
        run(["apt-cacher-ng", "-c", str(self.dir / "conf")])
        deadline = time.monotonic() + 10
        while not self._answers():
            if time.monotonic() > deadline:
                raise FleetError(f"apt-cacher-ng did not answer on {self.url}; see {self.dir / 'log'}")
            time.sleep(0.2)

    def stop(self):
        pid = self._pid()
        if pid:
            terminate(pid, timeout=10)
