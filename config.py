"""pyinfra's settings for every run from this directory (deploy.py, minor_update.py, rebuild_staging.py).

pyinfra reads this file before it connects to any host. A setting a deploy file makes is undone before its
operations run, so settings that must hold for the whole run live here.
"""

from pyinfra import config, state
from pyinfra.api.state import StateStage

# One unreachable or failed host stops the run: a tier half-deployed around a missing host is worse than no
# change, and the rolling steps (minor updates, the staging rebuild's clearing) need every database host.
config.FAIL_PERCENT = 0
# Except at connect: there deploys.knobs.check_inventory stops the run instead, before any fact is gathered, in one
# line that names the unreachable hosts and what to do (pyinfra's own stop says only "Over 0% of hosts failed").
# Without -y, pyinfra's prompt replaces this.
state.should_raise_failed_hosts = lambda run: run.current_stage != StateStage.Connect
