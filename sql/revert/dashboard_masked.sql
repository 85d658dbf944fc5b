BEGIN;
DROP VIEW portal.dashboard_masked;
GRANT SELECT ON portal.mv_user_dashboard TO portal_reporting;
COMMIT;
