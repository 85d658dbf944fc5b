SELECT 1 / count(*)::int FROM pg_trigger WHERE tgname = 'guard_retention_policy' AND tgrelid = 'portal.retention_policies'::regclass;
SELECT 1 / (NOT has_table_privilege('portal_admin', 'portal.retention_policies', 'UPDATE'))::int;
