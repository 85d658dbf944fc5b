-- Login sessions, by the SHA-256 of the session token (the token itself is never stored). The app resolves a
-- token to its user before it knows the tenant, through portal.session_user_id(), then sets the tenant.
BEGIN;
CREATE TABLE portal.user_sessions (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES portal.users (id) ON DELETE CASCADE,
  token_sha256 bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  is_active boolean NOT NULL DEFAULT true,
  client_ip inet,
  user_agent text,
  CHECK (expires_at > created_at)
);
CREATE INDEX idx_sessions_expiry ON portal.user_sessions (expires_at) WHERE is_active;
CREATE INDEX idx_sessions_user ON portal.user_sessions (user_id) WHERE is_active;

CREATE FUNCTION portal.session_user_id(token_sha256 bytea) RETURNS uuid
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  SELECT s.user_id FROM portal.user_sessions s JOIN portal.users u ON u.id = s.user_id
   WHERE s.token_sha256 = session_user_id.token_sha256 AND s.is_active AND s.expires_at > now() AND u.is_active
$$;
ALTER FUNCTION portal.session_user_id(bytea) OWNER TO portal_definer;
REVOKE ALL ON FUNCTION portal.session_user_id(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION portal.session_user_id(bytea) TO portal_app;

ALTER TABLE portal.user_sessions ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY sessions_tenant ON portal.user_sessions FOR ALL TO portal_app
  USING (user_id = (SELECT portal.tenant())) WITH CHECK (user_id = (SELECT portal.tenant()));
CREATE POLICY sessions_admin ON portal.user_sessions FOR ALL TO portal_admin USING (true) WITH CHECK (true);
REVOKE ALL ON portal.user_sessions FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON portal.user_sessions TO portal_app, portal_admin;
GRANT SELECT, DELETE ON portal.user_sessions TO portal_maintenance;
GRANT SELECT ON portal.user_sessions TO portal_definer;
COMMIT;
