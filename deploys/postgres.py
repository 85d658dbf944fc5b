"""PostgreSQL on every database host: Debian's packages, held against unattended upgrades, and clusters
with data checksums. A cluster that holds data is never dropped or re-initialised."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, files, server

from deploys.facts import AptHolds, PostgresClusters

DEFAULTS = {
    "postgres_major": 17,
    "postgres_cluster": "main",
}
# A fresh cluster holds template0, template1 and postgres.
EMPTY_CLUSTER_DATABASES = 3


@deploy("PostgreSQL server", data_defaults=DEFAULTS)
def server_packages():
    major = host.data.postgres_major
    packages = [f"postgresql-{major}", f"postgresql-client-{major}", "postgresql-common", "postgresql-client-common"]
    apt.packages(name="Install postgresql-common", packages=["postgresql-common"], update=True, cache_time=3600)
    # Debian's package creates its first cluster during install: make that cluster with checksums.
    files.line(
        name="New clusters get data checksums",
        path="/etc/postgresql-common/createcluster.conf",
        line=r"^#?\s*initdb_options\s*=.*$",
        replace="initdb_options = '--data-checksums'",
    )
    apt.packages(name=f"Install PostgreSQL {major}", packages=packages[:2])
    held = host.get_fact(AptHolds)
    unheld = [p for p in packages if p not in held]
    if unheld:
        server.shell(
            name="Hold the PostgreSQL packages (minor updates go through the rolling update, replicas first)",
            commands=[f"apt-mark hold {' '.join(unheld)}"],
        )
    _checksums(major)


def _checksums(major):
    """Turn checksums on, offline, for an empty cluster that lacks them; refuse for one with data."""
    key = f"{major}/{host.data.postgres_cluster}"
    cluster = host.get_fact(PostgresClusters).get(key)
    if not cluster or cluster["checksums"]:
        return
    if cluster["databases"] > EMPTY_CLUSTER_DATABASES:
        raise DeployError(
            f"{host.name}: cluster {key} holds data and has no data checksums; the deploy will not rewrite it. "
            f"Plan downtime and run `pg_checksums --enable` on it stopped (docs/postgres.md)"
        )
    unit = f"postgresql@{major}-{host.data.postgres_cluster}"
    server.shell(
        name=f"Enable data checksums on the empty cluster {key} (offline, seconds)",
        commands=[
            f"systemctl stop {unit}",
            f"runuser -u postgres -- /usr/lib/postgresql/{major}/bin/pg_checksums --enable --pgdata {cluster['datadir']}",
            f"systemctl start {unit}",
        ],
    )
