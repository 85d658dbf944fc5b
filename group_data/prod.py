"""The prod environment (inventory/prod.py): connect as a sudo-capable user, become root per operation."""

_sudo = True

# The operator supplies the CA and host certificates (docs/secrets.md); the deploy refuses when one is missing.
tls_source = "operator"
tls_dir = "/etc/mcp-portal-secrets/prod/tls"
