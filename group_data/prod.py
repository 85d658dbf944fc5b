"""The prod environment (inventory/prod.py): connect as a sudo-capable user, become root per operation."""

_sudo = True

# The operator supplies the CA, host certificates and passwords (docs/secrets.md); the deploy refuses
# before touching any host when one is missing.
secrets_source = "operator"
secrets_dir = "/etc/mcp-portal-secrets/prod"

# The WAL archive: your bucket (versioning on; S3 Object Lock, default COMPLIANCE retention >= backup_retention_days:
# docs/backups.md; the preflight refuses it otherwise), your KMS key, and
# the archive user's keys in <secrets_dir>/s3/wal-archiver.json (put, get, list; no delete).
wal_archive_bucket = "mcp-portal-prod-archive"
wal_archive_prefix = "prod"
wal_archive_sse = "aws:kms"
wal_archive_kms_key_id = "alias/mcp-portal-prod-archive"

# The KMS key that wraps the portal's data keys, and its user's keys in <secrets_dir>/kms/portal-keys.json
# (kms:GenerateDataKey and kms:Decrypt on this key only; docs/secrets.md).
portal_kms_key_id = "alias/mcp-portal-prod-data"
