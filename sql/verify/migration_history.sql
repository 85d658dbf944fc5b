SELECT version, applied_at, checksum, rollback, note FROM portal.migration_history WHERE false;
