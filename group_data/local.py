"""The local fleet (inventory/local.py): connects as root with the key `fleet up` made."""

# Three database hosts share one 24 GiB machine with everything else.
postgres_memory_budget_mb = 512

# The deploy makes this environment's CA, certificates and passwords (git-ignored, docs/secrets.md).
secrets_dir = ".secrets/local"

# The assessment's two kinds of replica: one for real-time reads (10 MB lag), one for reporting (100 MB).
replica_purposes = {"pg-replica-1": "realtime", "pg-replica-2": "reporting"}

# A start that has not finished in 2 minutes on the fleet has failed: say so instead of waiting 10.
postgres_start_timeout_s = 120
