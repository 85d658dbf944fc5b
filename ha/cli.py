"""mcp-ha: move the tier's primary (docs/failover.md).

    mcp-ha status INVENTORY                   each database host's role, timeline, WAL positions; PgBouncer's targets
    mcp-ha switchover INVENTORY --to HOST     planned: clients paused, not failed; the old primary rejoins
    mcp-ha failover INVENTORY                 the primary is lost: promote the most advanced replica
"""

import argparse
import json
import sys
from pathlib import Path

# The checkout's deploy code, which mcp-ha shares (deploys/, hostside/, inventory/), as pyinfra finds it for a deploy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ha.tier import Refused, Tier, say  # noqa: E402


def status(tier):
    for name in tier.database_hosts:
        if not tier.reachable(name):
            print(f"{name:<24} unreachable")
            continue
        node = tier.node(name)
        role = "down" if not node else "standby" if node["in_recovery"] else "primary"
        where = "" if not node else (f"received {node['receive_lsn']} replayed {node['replay_lsn']} "
                                     f"streaming={node['streaming']}" if node["in_recovery"] else f"at {node['current_lsn']}")
        listed = "primary" if name == tier.primary else "replica"
        print(f"{name:<24} {role:<8} (inventory: {listed}) {where}")
    for name in tier.group("pgbouncer"):
        rows = tier.pgbouncer(name, "SHOW DATABASES").splitlines() if tier.reachable(name) else []
        targets = {row.split("|")[0]: row.split("|")[1] for row in rows}
        print(f"{name:<24} pgbouncer {json.dumps(targets, sort_keys=True)}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mcp-ha", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("status", "switchover", "failover"):
        command = commands.add_parser(name)
        command.add_argument("inventory", help="e.g. inventory/prod.py")
        if name == "switchover":
            command.add_argument("--to", required=True, metavar="HOST", help="the replica to promote")
    args = parser.parse_args(argv)
    try:
        tier = Tier(args.inventory)
        if args.command == "status":
            status(tier)
        elif args.command == "switchover":
            from ha.switchover import switchover
            switchover(tier, args.to)
        else:
            from ha.failover import failover
            failover(tier)
    except Refused as exc:
        say(f"{args.command} refused: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
