BEGIN;
\set tables 'portal.audit_logs portal.audit_changes portal.audit_logs_archive portal.audit_changes_archive'
\ir ../lib/refuse_dropping_rows.sql
DROP FUNCTION portal.archive_audit_partitions();
DROP FUNCTION portal.audit_partition_horizon();
DROP FUNCTION portal.ensure_audit_partitions(integer);
DROP TRIGGER audit_config_changes ON portal.user_server_configs;
DROP FUNCTION portal.audit_config_changes();
DROP TABLE portal.audit_changes_archive;
DROP TABLE portal.audit_logs_archive;
DROP TABLE portal.audit_changes;
DROP TABLE portal.audit_logs;
DROP TABLE portal.retention_policies;
COMMIT;
