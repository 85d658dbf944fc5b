"""`fleet`: the local fleet of booted Debian hosts on this machine."""

import argparse
import sys

from fleet.errors import FleetError

HOST_COMMANDS = {
    "reset": "return HOST to a bare base install (deletes its disk)",
    "stop": "power HOST off (its disk is kept)",
    "start": "power HOST on",
    "cut": "take HOST's network link down (HOST keeps running)",
    "heal": "bring HOST's network link back up",
}


def parser():
    p = argparse.ArgumentParser(prog="fleet", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", help="build (once) and boot every host; harmless when already up")
    down = sub.add_parser("down", help="remove every container, namespace, link, bridge and mount the fleet made")
    down.add_argument("--purge", action="store_true", help="also delete the cached base and apt cache")
    sub.add_parser("status", help="each host's address, state and whether ssh answers (exit 1 unless all answer)")
    ssh = sub.add_parser("ssh", help="ssh to HOST as root, or run CMD there")
    ssh.add_argument("host")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER)
    for name, text in HOST_COMMANDS.items():
        sub.add_parser(name, help=text).add_argument("host")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    from fleet.core import Fleet  # after parsing: `fleet --help` works without the fleet's dependencies
    try:
        fleet = Fleet()
        if args.command == "up":
            fleet.up()
        elif args.command == "down":
            fleet.down(purge=args.purge)
        elif args.command == "status":
            return fleet.status()
        elif args.command == "ssh":
            fleet.ssh(args.host, args.cmd)
        else:
            getattr(fleet, args.command)(args.host)
    except FleetError as exc:
        print(f"fleet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fleet: interrupted; run the same command again to converge, or `fleet down`", file=sys.stderr)
        return 130
    return 0
