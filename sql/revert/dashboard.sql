BEGIN;
DROP VIEW portal.my_dashboard;
DROP FUNCTION portal.dashboard_row();
DROP MATERIALIZED VIEW portal.mv_user_dashboard;
DO $$ BEGIN
  EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM portal_definer', current_database());
END $$;
COMMIT;
