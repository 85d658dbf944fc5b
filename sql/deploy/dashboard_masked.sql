-- Reporting reads the dashboard with e-mails masked, as it reads users (users_masked): the materialized view holds
-- raw e-mails, which reporting is denied in portal.users, so reporting loses it and reads this view instead. The
-- view runs as its owner (portal_definer, who owns the materialized view) and takes the stored mask from users.
BEGIN;
REVOKE SELECT ON portal.mv_user_dashboard FROM portal_reporting;
CREATE VIEW portal.dashboard_masked AS
  SELECT d.user_id, u.email_masked AS email, d.enabled_servers, d.running_servers, d.last_activity
    FROM portal.mv_user_dashboard d JOIN portal.users u ON u.id = d.user_id;
ALTER VIEW portal.dashboard_masked OWNER TO portal_definer;
REVOKE ALL ON portal.dashboard_masked FROM PUBLIC;
GRANT SELECT ON portal.dashboard_masked TO portal_admin, portal_reporting;
COMMIT;
