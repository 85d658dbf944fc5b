-- A user's configuration of an MCP server. encrypted_config is an envelope (encryption_keys.sql) whose
-- key_version is a column too, so the foreign key holds every stored ciphertext to a known key.
-- The assessment's covering index INCLUDE (encrypted_config, config_metadata) is not made: an index tuple is
-- limited to ~2.7 kB, so a large config would fail its INSERT. The unique key covers (enabled, container_state).
BEGIN;
CREATE TABLE portal.user_server_configs (
  id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id uuid NOT NULL REFERENCES portal.users (id) ON DELETE CASCADE,
  server_id uuid NOT NULL REFERENCES portal.mcp_servers (id),
  enabled boolean NOT NULL DEFAULT false,
  container_state text NOT NULL DEFAULT 'stopped'
    CHECK (container_state IN ('stopped', 'starting', 'running', 'stopping', 'error')),
  encrypted_config jsonb CONSTRAINT configs_envelope
    CHECK (encrypted_config IS NULL OR portal.is_envelope(encrypted_config)),
  key_version integer REFERENCES portal.encryption_keys (version),
  config_metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config_metadata) = 'object'),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT configs_key_version_matches CHECK (
    (encrypted_config IS NULL AND key_version IS NULL)
    OR (encrypted_config -> 'key_version' = to_jsonb(key_version)))
);
CREATE UNIQUE INDEX idx_configs_user_server ON portal.user_server_configs (user_id, server_id)
  INCLUDE (enabled, container_state);
CREATE INDEX idx_configs_by_user ON portal.user_server_configs (user_id) WHERE enabled;
CREATE INDEX idx_configs_server ON portal.user_server_configs (server_id);
CREATE INDEX idx_configs_key_version ON portal.user_server_configs (key_version);

ALTER TABLE portal.user_server_configs ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY configs_tenant ON portal.user_server_configs FOR ALL TO portal_app
  USING (user_id = (SELECT portal.tenant())) WITH CHECK (user_id = (SELECT portal.tenant()));
CREATE POLICY configs_admin ON portal.user_server_configs FOR ALL TO portal_admin USING (true) WITH CHECK (true);
CREATE POLICY configs_reporting ON portal.user_server_configs FOR SELECT TO portal_reporting USING (true);
REVOKE ALL ON portal.user_server_configs FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON portal.user_server_configs TO portal_app, portal_admin;
GRANT SELECT (id, user_id, server_id, enabled, container_state, key_version, created_at, updated_at)
  ON portal.user_server_configs TO portal_reporting;
GRANT SELECT, UPDATE (encrypted_config, key_version, updated_at) ON portal.user_server_configs TO portal_maintenance;
GRANT SELECT ON portal.user_server_configs TO portal_definer;
COMMIT;
