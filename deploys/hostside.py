"""The host-side programs (hostside/) installed as one unit: the package under layout.LIB_DIR, a launcher per program
in layout.LAUNCHER_DIR, and the Debian libraries they import. A database host gets every program; a PgBouncer host
only layout.POOLER_PROGRAMS, which need no library. docs/README's map lists them."""

from pyinfra import host
from pyinfra.api import deploy

from deploys import ship
from deploys.packages import install
from hostside import layout

LIBRARIES = ["python3-boto3", "python3-psycopg", "python3-cryptography"]


@deploy("Host-side programs")
def programs():
    """Returns True when any of them changes (a resident program restarts on it)."""
    database = "database" in host.groups
    install("Install the host-side programs' Python and libraries",
            packages=LIBRARIES if database else ["python3"])
    package = ship.tree("The host-side programs (hostside/)", ship.REPO / "hostside", f"{layout.LIB_DIR}/hostside",
                        excluded=["*.pyc", "__pycache__"])
    launchers = [ship.template(f"Launcher mcp-{name}", "templates/hostside-launcher.j2",
                               layout.program(name), "755", program=name, module=module, lib=layout.LIB_DIR)
                 for name, module in layout.PROGRAMS.items() if database or name in layout.POOLER_PROGRAMS]
    return any(op.will_change for op in (package, *launchers))
