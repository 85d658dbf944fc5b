"""The prod environment (inventory/prod.py): connect as a sudo-capable user, become root per operation."""

_sudo = True

# The operator supplies the CA, host certificates and passwords (docs/secrets.md); the deploy refuses
# before touching any host when one is missing.
secrets_source = "operator"
secrets_dir = "/etc/mcp-portal-secrets/prod"
