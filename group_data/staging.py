"""The staging environment (inventory/staging.py): connect as a sudo-capable user, become root per operation."""

_sudo = True
