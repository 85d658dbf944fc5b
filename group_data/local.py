"""The local fleet (inventory/local.py): connects as root with the key `fleet up` made."""

# Three database hosts share one 24 GiB machine with everything else.
postgres_memory_budget_mb = 512

# The deploy makes this environment's CA, certificates and passwords (git-ignored, docs/secrets.md).
secrets_dir = ".secrets/local"
