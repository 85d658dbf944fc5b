"""Rebuild staging from production's archive, first half: `make staging-rebuild` runs it, then deploy.py, then
tests/infra (docs/backups.md, "Staging rebuild").

    pyinfra inventory/staging.py rebuild_staging.py --data restore_source_prefix=prod \\
        [--data restore_source_bucket=B] [--data restore_target_time='2026-12-06 06:00:00+00']

On the first database host, production's data as of the target (or the end of its archive) is restored into a
scratch cluster that listens on no address, scrubbed and dumped; then every database host's old cluster is stopped
and cleared, etcd forgets it, and the hosts record a new archive generation. Everything that can refuse (a source
it cannot read, a target outside the source's window, production's own inventory) refuses before any host changes.
"""

from pyinfra import config, host
from pyinfra.api.exceptions import DeployError

from deploys.hostside import programs
from deploys.knobs import check_inventory
from deploys.ordering import barrier
from deploys.patroni import database_hosts
from deploys.rebuild import old_cluster_cleared, refuse_a_wrong_inventory, scrubbed_copy
from deploys.transport import send_without_delay

config.REQUIRE_PYINFRA_VERSION = "~=3.10"
# A failed scrubbed copy must stop every host's clearing. config.py sets this; only the command line can change it.
if config.FAIL_PERCENT != 0:
    raise DeployError("rebuild_staging.py: run it with --fail-percent 0 (config.py's; make staging-rebuild passes it "
                      "too): without it, the other hosts would clear their cluster after a failed scrubbed copy")

send_without_delay()
check_inventory()
database = "database" in host.groups
if database:
    refuse_a_wrong_inventory()
    programs()  # the scrub among them, as this checkout has it
    if host == database_hosts()[0]:
        scrubbed_copy()
barrier(name="The scrubbed copy is made")
if database:
    old_cluster_cleared()
