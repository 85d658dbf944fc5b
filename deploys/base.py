"""What every host of the tier gets first: a supported OS, and a record of the roles the deploy gave it."""

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import files

from deploys.knobs import knobs


def inventory_problem(groups):
    """What is wrong with the tier's shape, or None. `groups`: {group: [host names]} of the inventory.

    One primary; at least one PgBouncer (clients reach the tier through it); replicas may be none (PgBouncer's
    read-only entry then goes to the primary); no host both primary and replica.
    """
    primaries, replicas = groups.get("primary", []), groups.get("replicas", [])
    if len(primaries) != 1:
        return (f"the inventory needs exactly one host in group primary, has {len(primaries)} "
                f"({', '.join(primaries) or 'none'}); a replica with no primary cannot be deployed either")
    if not groups.get("pgbouncer"):
        return "the inventory's group pgbouncer is empty or missing; the tier's clients connect through PgBouncer: add a host"
    if primaries[0] in replicas:
        return f"{primaries[0]} is in both groups primary and replicas; put it in one"
    return None


@deploy("Host baseline")
def baseline():
    problem = inventory_problem({name: [h.name for h in inventory.get_group(name, [])]
                                 for name in ("primary", "replicas", "pgbouncer")})
    if problem:
        raise DeployError(problem)
    distro = host.get_fact(LinuxDistribution)
    wanted = knobs().supported_os
    if (distro["name"], distro["major"]) != (wanted.name, wanted.major):
        raise DeployError(
            f"{host.name} runs {distro['name']} {distro['major']}; this tier supports "
            f"{wanted.name} {wanted.major} only (group_data supported_os)"
        )
    files.template(
        name="Record this host's roles in /etc/mcp-portal/roles",
        src="templates/roles.j2",
        dest="/etc/mcp-portal/roles",
        mode="644",
        create_remote_dir=True,
        groups=sorted(host.groups),
    )
