"""mcp-ha: the tier's leadership, as Patroni runs it (docs/failover.md).

    mcp-ha status INVENTORY                   each member's role, state, timeline and lag (Patroni's view); where
                                              each PgBouncer host sends writes and HAProxy sends reads
    mcp-ha switchover INVENTORY --to HOST     planned: clients paused, not failed; Patroni hands leadership over

A failover needs no command: Patroni elects a new leader when the old one is lost, HAProxy sees it
and each PgBouncer host's mcp-follow-leader points the writes at it.
"""

import argparse
import sys
from pathlib import Path

# The checkout's deploy code, which mcp-ha shares (deploys/, hostside/, inventory/), as pyinfra finds it for a deploy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploys.routing import member_endpoint  # noqa: E402
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
        host, port = tier.pgbouncer_databases(pooler)[tier.data(pooler, "pgbouncer_rw_entry")]
        writes = next((name for name in tier.database_hosts if member_endpoint(tier.hosts[name]) == (host, int(port))),
                      None)
        if writes is None:  # mcp-follow-leader sees no single leader
            leaders = [s for s, status in tier.haproxy_servers(pooler, "primary").items() if status == "UP"]
            writes = f"HAProxy's leader listener, which has {', '.join(leaders) or 'nothing'}"
        replicas = [s for s, status in tier.haproxy_servers(pooler, "replicas").items() if status == "UP"]
        # The replicas listener's <member>-leader servers are its backups: used only when no replica is within its lag.
        reads = [s for s in replicas if not s.endswith("-leader")]
        fallback = [s.removesuffix("-leader") for s in replicas if s.endswith("-leader")]
        print(f"{pooler:<24} read-write -> {writes}; "
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
