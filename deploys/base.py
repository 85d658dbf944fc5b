"""What every host of the tier gets first: a supported OS, and a record of the roles the deploy gave it."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import LinuxDistribution

from deploys import ship
from deploys.knobs import knobs


def inventory_problem(groups):
    """What is wrong with the tier's shape, or None. `groups`: {group: [host names]} of the inventory.

    At least one database host (Patroni picks the leader among them; the first listed bootstraps a new cluster) and
    one PgBouncer host (clients reach the tier through them); the groups primary and replicas of the layout before
    Patroni are refused, as the deploy would ignore them.
    """
    stale = [g for g in ("primary", "replicas") if groups.get(g)]
    if stale:
        return (f"the inventory has group(s) {', '.join(stale)}: the database hosts are one group, database, and "
                "Patroni decides who leads (docs/inventories.md)")
    if not groups.get("database"):
        return "the inventory's group database is empty or missing; add the database hosts (docs/inventories.md)"
    if not groups.get("pgbouncer"):
        return "the inventory's group pgbouncer is empty or missing; the tier's clients connect through PgBouncer: add a host"
    return None


@deploy("Host baseline")
def baseline():
    distro = host.get_fact(LinuxDistribution)
    wanted = knobs().supported_os
    if (distro["name"], distro["major"]) != (wanted.name, wanted.major):
        raise DeployError(
            f"{host.name} runs {distro['name']} {distro['major']}; this tier supports "
            f"{wanted.name} {wanted.major} only (group_data supported_os)"
        )
    ship.template(
        "Record this host's roles in /etc/mcp-portal/roles",
        "templates/roles.j2",
        "/etc/mcp-portal/roles",
        "644",
        create_remote_dir=True,
        groups=sorted(host.groups),
    )
