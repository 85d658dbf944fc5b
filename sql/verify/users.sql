SELECT id, azure_oid, email, email_masked, display_name, role, is_active, metadata, created_at, updated_at
  FROM portal.users WHERE false;
SELECT 1 / (SELECT count(*)::int FROM pg_class WHERE oid = 'portal.users'::regclass AND relrowsecurity AND relforcerowsecurity);
SELECT id, email FROM portal.users_masked WHERE false;
