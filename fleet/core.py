"""The fleet's commands: bring every host up, take it all down, and the drills in between."""

import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from fleet import access as access_mod
from fleet import cgroup, network, rootfs
from fleet.access import Access
from fleet.aptproxy import CACHE_DIR as APT_CACHE_DIR
from fleet.aptproxy import AptProxy
from fleet.errors import FleetError
from fleet.layout import Layout
from fleet.machine import NSPAWN_RUNTIME, Machine
from fleet.s3endpoint import S3Endpoint, endpoint_url
from fleet.system import require_root, require_tools, run
from fleet.topology import Host, load

S3_NOTE = "in memory: outage drills use `fleet cut s3`; stop/start/reset lose every object and key"


def say(message):
    print(f"fleet: {message}", flush=True)


class Fleet:
    def __init__(self, topology=None, layout=None, progress=say):
        self.topology = topology or load()
        self.layout = layout or Layout()
        self.say = progress
        self.access = Access(self.layout)
        self.proxy = AptProxy(self.layout, self.topology)
        self.machines = {h.name: Machine(self.layout, self.topology, h) for h in self.topology.hosts}
        s3_host = self.topology.group("s3")[0]
        self.s3 = S3Endpoint(self.layout, self.access, s3_host)

    # -- checks -----------------------------------------------------------------------------------------

    def preflight(self):
        """Everything `up` can refuse, checked before it touches anything."""
        require_root()
        require_tools()
        cgroup.hierarchies()
        state = self.layout.read_state()
        bridge = network.link(self.topology.bridge)
        if state is None and bridge:
            raise FleetError(
                f"bridge {self.topology.bridge} exists but {self.layout.state_file} does not: another fleet or program uses it; "
                f"remove it (`ip link del {self.topology.bridge}`) or name another bridge in {self.topology.source}"
            )
        if state and state.get("owner", self.layout.owner) != self.layout.owner and self._any_running():
            raise FleetError(
                f"a fleet from {state['owner']} is running on bridge {self.topology.bridge}; "
                f"run `fleet down` in that checkout first"
            )
        if state and (state.get("subnet"), state.get("bridge")) != (str(self.topology.subnet), self.topology.bridge):
            raise FleetError(
                f"the fleet on this machine uses {state.get('subnet')} on {state.get('bridge')}, "
                f"{self.topology.source} now says {self.topology.subnet} on {self.topology.bridge}; run `fleet down` first"
            )
        network.check_subnet(self.topology, network.routes(), network.mirror_addresses(self.topology.mirror))

    def require_up(self):
        require_root()
        if self.layout.read_state() is None:
            raise FleetError("the fleet is not up; run `fleet up` (or `make local`)")

    def _any_running(self):
        return any(m.running for m in self.machines.values())

    # -- up / down --------------------------------------------------------------------------------------

    def up(self):
        self.preflight()
        fresh = self.layout.read_state() is None
        try:
            self._up()
        except BaseException:
            if fresh:
                self.say("up failed on a machine that had no fleet: removing what it made")
                self._down(purge=False)
            raise

    def _up(self):
        started = time.monotonic()
        state = self.layout.read_state()
        if state and state.get("owner", self.layout.owner) != self.layout.owner:
            self.say(f"taking over the stopped fleet left by {state['owner']}")
        mounted_runtime = (state or {}).get("mounted_runtime", False)
        if not os.path.ismount(NSPAWN_RUNTIME):
            NSPAWN_RUNTIME.mkdir(parents=True, exist_ok=True)
            run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", str(NSPAWN_RUNTIME)])
            mounted_runtime = True
        self.layout.write_state(subnet=str(self.topology.subnet), bridge=self.topology.bridge, mounted_runtime=mounted_runtime)

        network.ensure_bridge(self.topology)
        self.proxy.ensure()
        base = rootfs.ensure_base(self.layout, self.topology, self.proxy.url, self.say)
        self.layout.write_state(base=str(base))
        authorized_key = self.access.ensure_key()

        booting = []
        for machine in self.machines.values():
            network.ensure_host_link(self.topology, machine.host)
            machine.mount(base)
            if not machine.running:
                self._boot(machine, authorized_key)
                booting.append(machine.host.name)
        self._publish_names()
        if booting:
            self.say(f"booting {', '.join(booting)}")
        for name in booting:
            self._ready(name, authorized_key)
        self.s3.ensure(self.say, self._others_cut_off)
        self.say(f"up: {len(self.machines)} hosts running in {time.monotonic() - started:.0f}s "
                 f"({len(booting)} booted); ssh with `fleet ssh HOST` or `ssh -F {self.access.config} HOST`")

    def _boot(self, machine, authorized_key):
        machine.write_identity(authorized_key, access_mod.host_etc_hosts(self.topology), self.proxy.url)
        machine.boot()

    @contextmanager
    def _others_cut_off(self):
        """Every host but the S3 endpoint's off the network, then back as it was (a host cut before stays cut)."""
        connected = [m.host for n, m in self.machines.items() if n != self.s3.host.name and network.link_is_up(m.host.veth)]
        for host in connected:
            network.set_link(host, up=False)
        try:
            yield
        finally:
            for host in connected:
                network.set_link(host, up=True)

    def _ready(self, name, authorized_key):
        """A booted host answers ssh and has prod's deploy user: after `up`, `start` and `reset` alike."""
        self.access.wait_booted(name)
        self.access.ensure_operator(name, authorized_key)

    def _publish_names(self):
        """Names for the control machine: /etc/hosts, and ssh_config/known_hosts with every host's pinned key."""
        keys = {name: m.host_public_key() for name, m in self.machines.items() if m.exists()}
        self.access.write_client_files(self.topology, keys)
        access_mod.update_machine_hosts(access_mod.hosts_block(self.topology))

    def down(self, purge=False):
        require_root()
        self._down(purge)
        self.say("down: no container, namespace, link, bridge, mount or hosts entry of the fleet is left"
                 + ("; caches purged" if purge else f"; caches kept in {self.layout.cache_root} and {APT_CACHE_DIR} (`fleet down --purge` removes them)"))

    def _down(self, purge):
        hosts_dir = self.layout.state_root / "hosts"
        names = set(self.machines) | ({p.name for p in hosts_dir.iterdir()} if hosts_dir.exists() else set())
        machines = [self.machines.get(n) or Machine(self.layout, self.topology, _orphan_host(n)) for n in sorted(names)]
        with ThreadPoolExecutor(max_workers=len(machines) or 1) as pool:  # hosts power off side by side
            list(pool.map(Machine.remove, machines))
        for machine in machines:
            network.remove_host_link(machine.host)
        for netns in Path("/run/netns").glob("mcpf-*"):  # hosts of an older topology
            run(["ip", "netns", "del", netns.name])
        network.remove_bridge(self.topology)
        self.proxy.stop()
        access_mod.update_machine_hosts("")
        if (self.layout.read_state() or {}).get("mounted_runtime") and os.path.ismount(NSPAWN_RUNTIME):
            run(["umount", str(NSPAWN_RUNTIME)])
        self.access.clear()
        self.s3.forget()
        shutil.rmtree(self.layout.state_root, ignore_errors=True)
        if purge:
            shutil.rmtree(self.layout.cache_root, ignore_errors=True)
            shutil.rmtree(APT_CACHE_DIR, ignore_errors=True)

    # -- one host ---------------------------------------------------------------------------------------

    def _machine(self, name):
        self.require_up()
        return self.machines[self.topology.host(name).name]

    def status(self):
        require_root()
        state = self.layout.read_state()
        if state is None:
            print("fleet: not up (run `fleet up`)")
            return 1
        rows, healthy = [("HOST", "ADDRESS", "STATE", "SSH", "NOTE")], True
        for name, machine in self.machines.items():
            running = machine.running
            link_up = network.link_is_up(machine.host.veth)
            state_word = "running" if running and link_up else "cut" if running else "stopped" if machine.exists() else "absent"
            answers = running and link_up and self.access.answers(name, timeout=4)
            healthy &= bool(answers)
            note = f"S3/KMS at {endpoint_url(machine.host)}, {S3_NOTE}" if machine.host is self.s3.host else ""
            rows.append((name, str(machine.host.address), state_word, "yes" if answers else "no", note))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
        print(f"owner {state.get('owner')}; apt proxy {self.proxy.url}; bridge {self.topology.bridge} {self.topology.gateway}/{self.topology.subnet.prefixlen}")
        return 0 if healthy else 1

    def ssh(self, name, command):
        machine = self._machine(name)
        if not machine.running:
            raise FleetError(f"host {name} is stopped; run `fleet start {name}`")
        argv = self.access.ssh_argv(name, " ".join(command) if command else None, tty=not command and sys.stdin.isatty())
        os.execvp(argv[0], argv)

    def stop(self, name):
        machine = self._machine(name)
        if machine.host is self.s3.host:
            self.say(f"warning: {name} keeps everything in memory; stopping it loses every object and key")
        machine.poweroff()
        self.say(f"{name} stopped (its disk is kept; `fleet start {name}` boots it)")

    def start(self, name):
        machine = self._machine(name)
        if machine.running:
            self.say(f"{name} is already running")
            return
        self._start(machine)
        self.say(f"{name} running")

    def reset(self, name):
        machine = self._machine(name)
        self.say(f"resetting {name} to a bare host: its disk is deleted")
        machine.remove()
        if machine.host is self.s3.host:
            self.s3.forget()
        self._start(machine)
        self.say(f"{name} is bare and running")

    def _start(self, machine):
        """Boot one host of a fleet that is up; a new host key (after reset) is published before ssh is tried."""
        network.ensure_host_link(self.topology, machine.host)
        machine.mount(Path(self.layout.read_state()["base"]))
        authorized_key = self.access.ensure_key()
        self._boot(machine, authorized_key)
        self._publish_names()
        self._ready(machine.host.name, authorized_key)
        if machine.host is self.s3.host:
            self.s3.ensure(self.say, self._others_cut_off)

    def cut(self, name):
        machine = self._machine(name)
        network.set_link(machine.host, up=False)
        self.say(f"{name} is cut off the network (it keeps running; `fleet heal {name}` reconnects it)")

    def heal(self, name):
        machine = self._machine(name)
        network.set_link(machine.host, up=True)
        self.say(f"{name} is back on the network")


def _orphan_host(name):
    """A host directory left by an older topology: enough of a Host to remove it."""
    return Host(name, None, (), 0)
