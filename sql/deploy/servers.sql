-- The catalogue of MCP servers: every tenant reads the active ones; admins manage them.
BEGIN;
CREATE TABLE portal.mcp_servers (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,99}$'),
  display_name text NOT NULL,
  description text NOT NULL DEFAULT '',
  created_by uuid REFERENCES portal.users (id) ON DELETE SET NULL,
  is_active boolean NOT NULL DEFAULT true,
  metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_servers_created_by ON portal.mcp_servers (created_by) WHERE is_active;

ALTER TABLE portal.mcp_servers ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY servers_catalogue ON portal.mcp_servers FOR SELECT TO portal_app, portal_reporting USING (is_active);
CREATE POLICY servers_admin ON portal.mcp_servers FOR ALL TO portal_admin USING (true) WITH CHECK (true);
REVOKE ALL ON portal.mcp_servers FROM PUBLIC;
GRANT SELECT ON portal.mcp_servers TO portal_app, portal_reporting, portal_maintenance, portal_definer;
GRANT SELECT, INSERT, UPDATE, DELETE ON portal.mcp_servers TO portal_admin;
COMMIT;
