BEGIN;
REVOKE UPDATE (retention_days, archive_after_days, delete_after_days) ON portal.retention_policies FROM portal_admin;
GRANT UPDATE ON portal.retention_policies TO portal_admin;
DROP TRIGGER guard_retention_policy ON portal.retention_policies;
DROP FUNCTION portal.guard_retention_policy();
COMMIT;
