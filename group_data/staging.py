"""The staging environment (inventory/staging.py): connect as a sudo-capable user, become root per operation."""

_sudo = True

# The deploy makes this environment's CA, certificates and passwords, outside git (docs/secrets.md).
secrets_dir = ".secrets/staging"
