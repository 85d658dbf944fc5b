SELECT user_id, email, enabled_servers, running_servers, last_activity FROM portal.dashboard_masked WHERE false;
SELECT 1 / (NOT has_table_privilege('portal_reporting', 'portal.mv_user_dashboard', 'SELECT'))::int;
