"""The staging environment (inventory/staging.py): connect as a sudo-capable user, become root per operation."""

_sudo = True

# The deploy makes this environment's CA, certificates and passwords, outside git (docs/secrets.md).
secrets_dir = ".secrets/staging"

# The WAL archive (docs/backups.md): staging's own prefix and keys (<secrets_dir>/s3/wal-archiver.json), never prod's.
wal_archive_bucket = "mcp-portal-staging-archive"
wal_archive_prefix = "staging"
wal_archive_sse = "aws:kms"
wal_archive_kms_key_id = "alias/mcp-portal-staging-archive"

# The KMS key that wraps the portal's data keys; its user's keys in <secrets_dir>/kms/portal-keys.json.
portal_kms_key_id = "alias/mcp-portal-staging-data"
