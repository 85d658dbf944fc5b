SELECT id, name, display_name, description, created_by, is_active, metadata, created_at, updated_at
  FROM portal.mcp_servers WHERE false;
SELECT 1 / (SELECT count(*)::int FROM pg_class WHERE oid = 'portal.mcp_servers'::regclass AND relforcerowsecurity);
