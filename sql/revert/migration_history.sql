BEGIN;
DROP VIEW portal.migration_history;
REVOKE SELECT ON sqitch.changes FROM portal_admin, portal_reporting;
REVOKE USAGE ON SCHEMA sqitch FROM portal_admin, portal_reporting;
COMMIT;
