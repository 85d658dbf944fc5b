SELECT id, user_id, server_id, enabled, container_state, encrypted_config, key_version, config_metadata,
       created_at, updated_at
  FROM portal.user_server_configs WHERE false;
SELECT 1 / (SELECT count(*)::int FROM pg_class WHERE oid = 'portal.user_server_configs'::regclass
            AND relrowsecurity AND relforcerowsecurity);
