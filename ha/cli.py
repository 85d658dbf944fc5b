"""mcp-ha: the tier's leadership, as Patroni runs it (docs/failover.md).

    mcp-ha status INVENTORY                   each member's role, state, timeline and lag (Patroni's view); what
                                              each PgBouncer host's HAProxy routes to
    mcp-ha switchover INVENTORY --to HOST     planned: clients paused, not failed; Patroni hands leadership over

A failover needs no command: Patroni elects a new leader when the old one is lost, and HAProxy follows it.
"""

import argparse
import sys
from pathlib import Path

# The checkout's deploy code, which mcp-ha shares (deploys/, hostside/, inventory/), as pyinfra finds it for a deploy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ha.tier import Refused, Tier, say  # noqa: E402


def status(tier):
    members = tier.members()
    if not members:
        print("no Patroni member answers: the cluster is not running (or not deployed yet)")
    for name, member in members.items():
        lag = member.get("lag", "")
        print(f"{name:<24} {member['role']:<14} {member['state']:<10} timeline {member.get('timeline', '?')}"
              + (f" lag {lag}" if lag != "" else "") + f" tags {member.get('tags', {})}")
    for pooler in tier.group("pgbouncer"):
        if not tier.reachable(pooler):
            print(f"{pooler:<24} unreachable")
            continue
        routes = {listener: [s for s, status in tier.haproxy_servers(pooler, listener).items() if status == "UP"]
                  for listener in ("primary", "replicas")}
        # The replicas listener's <member>-leader servers are its backups: used only when no replica is within its lag.
        reads = [s for s in routes["replicas"] if not s.endswith("-leader")]
        fallback = [s.removesuffix("-leader") for s in routes["replicas"] if s.endswith("-leader")]
        print(f"{pooler:<24} read-write -> {', '.join(routes['primary']) or 'nothing'}; "
              f"read-only -> {', '.join(reads) or 'nothing'}"
              + (f" (else {', '.join(fallback)})" if fallback else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mcp-ha", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("status", "switchover"):
        command = commands.add_parser(name)
        command.add_argument("inventory", help="e.g. inventory/prod.py")
        if name == "switchover":
            command.add_argument("--to", required=True, metavar="HOST", help="the replica to hand leadership to")
    args = parser.parse_args(argv)
    try:
        tier = Tier(args.inventory)
        if args.command == "status":
            status(tier)
        else:
            from ha.switchover import switchover
            switchover(tier, args.to)
    except Refused as exc:
        say(f"{args.command} refused: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
