"""PostgreSQL on every database host: Debian's packages, held against unattended upgrades. The package makes no
cluster of its own: Patroni bootstraps the tier's (with data checksums) or clones it from the leader
(deploys/patroni.py). A cluster that holds data is never dropped or re-initialised."""

from shlex import quote

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server

from deploys import ship
from deploys.facts import AptHolds, AptVersions
from deploys.knobs import knobs
from deploys.ordering import barrier
from deploys.packages import install
from hostside import layout

# How long a rolling update waits for a restarted host to be ready.
READY_WAIT_S = 120
# A fresh cluster holds template0, template1 and postgres.
EMPTY_CLUSTER_DATABASES = 3


def cluster():
    """This host's PostgreSQL cluster (hostside/layout.py derives its paths and units)."""
    return layout.Cluster(knobs().postgres_major, knobs().postgres_cluster)


def _packages(major):
    """The PostgreSQL packages the deploy installs and holds."""
    return [f"postgresql-{major}", f"postgresql-client-{major}", "postgresql-common", "postgresql-client-common"]


@deploy("PostgreSQL server")
def server_packages():
    k = knobs()
    packages = _packages(k.postgres_major)
    install("Install postgresql-common", packages=["postgresql-common"])
    _apt_repository(k)
    # Before the server package: it would make and start a cluster of its own, which only Patroni may do.
    for name, line, value in (("No cluster at install (Patroni makes it)", "create_main_cluster", "false"),
                              ("Clusters get data checksums", "initdb_options", "'--data-checksums'")):
        files.line(name=name, path="/etc/postgresql-common/createcluster.conf", line=rf"^#?\s*{line}\s*=.*$",
                   replace=f"{line} = {value}")
    install(f"Install PostgreSQL {k.postgres_major}", packages=packages[:2])
    held = host.get_fact(AptHolds)
    unheld = [p for p in packages if p not in held]
    if unheld:
        server.shell(
            name="Hold the PostgreSQL packages (minor updates go through the rolling update, replicas first)",
            commands=[f"apt-mark hold {' '.join(unheld)}"],
        )


def _apt_repository(k):
    if k.postgres_apt_repository == "pgdg":
        codename = host.get_fact(LinuxDistribution)["release_meta"]["VERSION_CODENAME"]
        sources = ship.template("PGDG apt repository", "templates/pgdg.sources.j2",
                                "/etc/apt/sources.list.d/pgdg.sources", "644",
                                 uri=k.postgres_pgdg_uri, suite=f"{codename}-pgdg")
        if sources.will_change:
            apt.update(name="Refresh the package index (PGDG added)")
    else:
        files.file(name="No PGDG apt repository", path="/etc/apt/sources.list.d/pgdg.sources", present=False)


@deploy("PostgreSQL minor update")
def minor_update(leading):
    """The held PostgreSQL packages updated to the candidate in each host's package index, replicas one at a time,
    then the leader (`leading`: this host leads); each restarts on the new binaries through Patroni and must be
    running again (a replica: streaming) before the next one starts. Hosts already on their candidate change nothing."""
    pg = cluster()
    versions = host.get_fact(AptVersions, packages=_packages(pg.major))
    outdated = {p: v for p, v in versions.items() if v.get("installed") not in (None, "(none)", v.get("candidate"))}
    barrier(name="Update turn: replicas")
    if outdated and not leading:
        _update(outdated, _serial=True)
    barrier(name="Update turn: leader")
    if outdated and leading:
        _update(outdated)


def _update(outdated, **global_arguments):
    names = " ".join(quote(p) for p in outdated)
    shown = ", ".join(f"{p} {v['installed']} -> {v['candidate']}" for p, v in outdated.items())
    server.shell(
        name=f"Update {shown}; restart through Patroni",
        commands=[
            # Held again whatever apt does: no later unattended upgrade restarts the cluster.
            f"apt-mark unhold {names} && {{ DEBIAN_FRONTEND=noninteractive apt-get install -y --only-upgrade "
            f"-o Dpkg::Options::=--force-confold {names}; rc=$?; apt-mark hold {names}; exit $rc; }}",
            f"{layout.program('cluster')} restart",
            f"{layout.program('cluster')} wait-running --timeout {READY_WAIT_S}",
        ],
        **global_arguments,
    )


def wait_for(check, failure, seconds):
    """A command that waits until `check` succeeds, or fails saying `failure`."""
    return (f"for i in $(seq {seconds}); do {check} && break; sleep 1; done; {check} || "
            f"{{ echo {quote(f'{failure} after {seconds}s')} >&2; exit 1; }}")
