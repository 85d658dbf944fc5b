"""The prod environment (inventory/prod.py): connect as a sudo-capable user, become root per operation."""

_sudo = True
