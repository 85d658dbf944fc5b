"""pyinfra's settings for every run from this directory (deploy.py, minor_update.py, rebuild_staging.py).

pyinfra reads this file before it connects to any host. A setting a deploy file makes is undone before its
operations run, so settings that must hold for the whole run live here.
"""

from pyinfra import config

# One unreachable or failed host stops the run: a tier half-deployed around a missing host is worse than no
# change, and the rolling steps (minor updates, the staging rebuild's clearing) need every database host.
config.FAIL_PERCENT = 0
