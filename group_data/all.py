"""Knobs for every host of every environment. Every knob, its type, default and what it does: docs/knobs.md
(generated from deploys/knobs.py). A key that is not a knob, or a value of the wrong shape, stops the deploy
before any host changes. Set a knob here, in <env>.py (local, prod, staging) or <group>.py only to change it.

The ones most often set, with their defaults:

# Memory PostgreSQL may use on each database host (sizes shared_buffers, work_mem, ...).
postgres_memory_budget_mb = 1024
postgres_max_connections = 100
# postgresql.conf parameters over the tier's own, each checked against PostgreSQL 17's catalogue.
postgres_settings = {"log_min_duration_statement": "250ms"}
# An admin network, TLS and SCRAM (or client certificates) only.
postgres_hba_extra = [{"database": "all", "user": "portal_admin", "address": "10.20.0.0/24"}]
# Replica purposes: realtime (fresh reads, the default) or reporting (long queries).
replica_purposes = {"db-3.prod.example.invalid": "reporting"}
# A commit waits for ANY 1 of the replicas (needs two).
synchronous_replication = False
# PgBouncer's pool sizing (keys over their defaults).
pgbouncer_pool = {"default_pool_size": 25, "max_db_connections": 30}
# The WAL archive and base backups.
wal_archive_bucket = "mcp-portal-prod-archive"
wal_archive_prefix = "prod"
backup_schedule = "*-*-* 02:00:00"
backup_retention_days = 30
"""
