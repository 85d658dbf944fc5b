-- The dashboard summary. A materialized view cannot have row-level security, so tenants never read it:
-- portal.my_dashboard (security_invoker) calls portal.dashboard_row(), which returns the tenant's row only.
-- It is owned by portal_definer (BYPASSRLS) so that a refresh, which runs as the owner, sees every user;
-- the maintenance role refreshes it (MAINTAIN) concurrently, without blocking readers; a concurrent refresh
-- diffs through a temporary table made as the owner.
BEGIN;
DO $$ BEGIN
  EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO portal_definer', current_database());
END $$;
CREATE MATERIALIZED VIEW portal.mv_user_dashboard AS
  SELECT u.id AS user_id,
         u.email,
         count(DISTINCT c.server_id) FILTER (WHERE c.enabled) AS enabled_servers,
         count(DISTINCT c.server_id) FILTER (WHERE c.container_state = 'running') AS running_servers,
         max(c.updated_at) AS last_activity
    FROM portal.users u LEFT JOIN portal.user_server_configs c ON c.user_id = u.id
   GROUP BY u.id
  WITH NO DATA;
-- Made in this transaction, before anyone can read the view: nothing to block.
-- squawk-ignore require-concurrent-index-creation
CREATE UNIQUE INDEX idx_mv_user_dashboard_user_id ON portal.mv_user_dashboard (user_id);
ALTER MATERIALIZED VIEW portal.mv_user_dashboard OWNER TO portal_definer;
REFRESH MATERIALIZED VIEW portal.mv_user_dashboard;
REVOKE ALL ON portal.mv_user_dashboard FROM PUBLIC;
GRANT SELECT ON portal.mv_user_dashboard TO portal_admin, portal_reporting;
GRANT SELECT, MAINTAIN ON portal.mv_user_dashboard TO portal_maintenance;

CREATE FUNCTION portal.dashboard_row() RETURNS SETOF portal.mv_user_dashboard
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  SELECT * FROM portal.mv_user_dashboard WHERE user_id = portal.tenant()
$$;
ALTER FUNCTION portal.dashboard_row() OWNER TO portal_definer;
REVOKE ALL ON FUNCTION portal.dashboard_row() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION portal.dashboard_row() TO portal_app;

CREATE VIEW portal.my_dashboard WITH (security_invoker = true) AS SELECT * FROM portal.dashboard_row();
REVOKE ALL ON portal.my_dashboard FROM PUBLIC;
GRANT SELECT ON portal.my_dashboard TO portal_app;
COMMIT;
