"""The Debian base root filesystem: built once with debootstrap, cached, shared read-only by every host."""

import hashlib
import shutil
import time

from fleet.errors import FleetError
from fleet.system import run

# Only what a booted, reachable host needs; the deploy installs everything else.
INCLUDE = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2", "sudo", "procps")
# Bump when configure() changes, so cached bases are rebuilt.
RECIPE_VERSION = 1
READY_MARK = ".fleet-base-ready"


def base_path(layout, topology):
    recipe = f"{RECIPE_VERSION}|{topology.suite}|{topology.mirror}|{','.join(INCLUDE)}"
    return layout.cache_root / f"base-{topology.suite}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def ensure_base(layout, topology, proxy_url, say):
    path = base_path(layout, topology)
    if (path / READY_MARK).exists():
        return path
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    say(f"building the {topology.suite} base with debootstrap (about a minute, once)")
    started = time.monotonic()
    result = run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", topology.suite, str(partial), topology.mirror],
        check=False, timeout=1800, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "http_proxy": proxy_url},
    )
    if result.returncode != 0:
        log = partial / "debootstrap" / "debootstrap.log"
        shutil.rmtree(partial, ignore_errors=True)
        last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise FleetError(f"debootstrap {topology.suite} failed: {last[0]} (log was {log}); check the mirror {topology.mirror}")
    configure(partial, topology)
    (partial / READY_MARK).write_text(f"built in {time.monotonic() - started:.0f}s\n")
    partial.rename(path)
    say(f"base ready in {time.monotonic() - started:.0f}s: {path}")
    return path


def configure(root, topology):
    """What every host shares. Per-host identity (names, keys, machine-id) goes into each host's overlay."""
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc" / "ssh" / "sshd_config.d" / "fleet.conf").write_text(
        "# local fleet: key-only root login, one host key made per host, no reverse DNS (hosts have no DNS)\n"
        "HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\nPermitRootLogin prohibit-password\nUseDNS no\n"
    )
    (root / "etc" / "apt" / "sources.list").unlink(missing_ok=True)
    (root / "etc" / "apt" / "sources.list.d" / "debian.sources").write_text(
        f"Types: deb\nURIs: {topology.mirror}\nSuites: {topology.suite} {topology.suite}-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {topology.mirror}-security\nSuites: {topology.suite}-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    (root / "etc" / "machine-id").write_text("")
    (root / "etc" / "resolv.conf").unlink(missing_ok=True)
    (root / "etc" / "resolv.conf").write_text("# the local fleet has no DNS: names are in /etc/hosts\n")
