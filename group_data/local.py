"""The local fleet (inventory/local.py): connects as root with the key `fleet up` made."""

from fleet.inventory import s3_archive

# Three database hosts share one 24 GiB machine with everything else.
postgres_memory_budget_mb = 512

# The deploy makes this environment's CA, certificates and passwords (git-ignored, docs/secrets.md).
secrets_dir = ".secrets/local"

# The assessment's two kinds of replica: pg-1 and pg-2 serve real-time reads (10 MB lag) when they are replicas, pg-3
# serves reporting (100 MB) and takes over only when neither of the others can.
replica_purposes = {"pg-3": "reporting"}

# The fleet's containers share the machine's kernel: no watchdog may reset one of them (docs/failover.md says what
# that leaves unprotected).
patroni_watchdog = "off"
# The fast timing profile (bench/results/failover.md): a lost or cut leader is replaced in about 21 s (the tier's
# defaults: about 25 s), and the tests' failover drills wait less. Patroni clamps ttl to 20 s at least.
patroni_ttl = 20
patroni_loop_wait = 5
patroni_retry_timeout = 5
haproxy_check_interval_ms = 1000
haproxy_check_fall = 2
haproxy_check_rise = 1

# The fleet's S3/KMS endpoint speaks plain http (on the fleet's own bridge); prod and staging refuse it.
plain_http_endpoints = True
# The WAL archive on the fleet's S3/KMS endpoint: `fleet up` makes the bucket (versioned), the KMS key and the
# archive's credentials (put, get, list; no delete) in .fleet/s3/, as a cloud account would for prod.
wal_archive_endpoint_url = s3_archive().get("endpoint_url", "")
wal_archive_bucket = s3_archive().get("bucket", "")
wal_archive_kms_key_id = s3_archive().get("kms_key_id", "")
wal_archive_sse = "aws:kms"
wal_archive_prefix = "local"
wal_archive_credentials = ".fleet/s3/wal-archiver.json"
# Retention's own keys, the only ones that may delete.
backup_retention_credentials = ".fleet/s3/backup-retention.json"
# Every timer backup full, so each test's backup stands alone; tests/e2e/test_incremental_backups.py takes
# incremental ones with the default schedule's flag.
backup_full_every_days = 0

# The portal's data keys are wrapped by the endpoint's second KMS key; `fleet up` issues a user that may only
# make and unwrap data keys with it.
portal_kms_key_id = s3_archive().get("data_kms_key_id", "")
portal_kms_endpoint_url = s3_archive().get("endpoint_url", "")
portal_kms_region = s3_archive().get("region", "us-east-1")
portal_kms_credentials = ".fleet/s3/portal-keys.json"
