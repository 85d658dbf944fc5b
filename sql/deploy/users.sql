-- Portal users. Tenants read and edit their own row only; admins all rows; reporting sees no raw e-mail
-- (column grants) and reads users_masked. email_masked is stored so the masked view needs no e-mail privilege.
BEGIN;
CREATE TABLE portal.users (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  azure_oid text NOT NULL UNIQUE,
  email text NOT NULL UNIQUE CHECK (email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
  email_masked text GENERATED ALWAYS AS (regexp_replace(email, '^(.{1,2})[^@]*(@.*)$', '\1****\2')) STORED,
  display_name text NOT NULL DEFAULT '',
  role text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'team_admin', 'super_admin')),
  is_active boolean NOT NULL DEFAULT true,
  metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_users_azure_oid_active ON portal.users (azure_oid) WHERE is_active;

ALTER TABLE portal.users ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
REVOKE ALL ON portal.users FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON portal.users TO portal_admin;
GRANT SELECT ON portal.users TO portal_app, portal_maintenance, portal_definer;
GRANT UPDATE (display_name, metadata, updated_at) ON portal.users TO portal_app;
GRANT INSERT, UPDATE ON portal.users TO portal_definer;
GRANT SELECT (id, email_masked, display_name, role, is_active, created_at, updated_at) ON portal.users TO portal_reporting;

CREATE VIEW portal.users_masked WITH (security_invoker = true) AS
  SELECT id, email_masked AS email, display_name, role, is_active, created_at FROM portal.users;
REVOKE ALL ON portal.users_masked FROM PUBLIC;
GRANT SELECT ON portal.users_masked TO portal_admin, portal_reporting;
COMMIT;
