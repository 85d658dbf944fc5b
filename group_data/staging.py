"""The staging environment (inventory/staging.py): connect as a sudo-capable user, become root per operation."""

_sudo = True

# The deploy makes this environment's CA and certificates, outside git (see docs/secrets.md).
tls_dir = ".secrets/staging/tls"
