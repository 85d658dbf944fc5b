"""What every host of the tier gets first: a supported OS, and a record of the roles the deploy gave it."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import files

DEFAULTS = {
    # PostgreSQL 17 comes from this release's archive; anything else is refused before a change is made.
    "supported_os": {"name": "Debian", "major": 13},
}


@deploy("Host baseline", data_defaults=DEFAULTS)
def baseline():
    distro = host.get_fact(LinuxDistribution)
    wanted = host.data.supported_os
    if (distro["name"], distro["major"]) != (wanted["name"], wanted["major"]):
        raise DeployError(
            f"{host.name} runs {distro['name']} {distro['major']}; this tier supports "
            f"{wanted['name']} {wanted['major']} only (group_data supported_os)"
        )
    files.template(
        name="Record this host's roles in /etc/mcp-portal/roles",
        src="templates/roles.j2",
        dest="/etc/mcp-portal/roles",
        mode="644",
        create_remote_dir=True,
        groups=sorted(host.groups),
    )
