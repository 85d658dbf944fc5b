-- The portal's schema, owned by portal_owner (migrations run as it), and the database's search_path.
BEGIN;
CREATE SCHEMA portal AUTHORIZATION portal_owner;
REVOKE ALL ON SCHEMA portal FROM PUBLIC;
GRANT USAGE ON SCHEMA portal TO portal_app, portal_admin, portal_reporting, portal_maintenance;
-- portal_definer owns the SECURITY DEFINER functions and the dashboard (BYPASSRLS, NOLOGIN): owning needs CREATE.
GRANT USAGE, CREATE ON SCHEMA portal TO portal_definer;
DO $$ BEGIN
  EXECUTE format('ALTER DATABASE %I SET search_path = portal, public', current_database());
END $$;
COMMIT;
