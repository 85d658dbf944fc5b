SELECT 1 / (SELECT count(*)::int FROM portal.tenant_key);
SELECT 1 / (NOT has_table_privilege('portal_app', 'portal.tenant_key', 'SELECT'))::int;
SELECT 1 / (SELECT count(*)::int FROM pg_proc WHERE oid = 'portal.tenant()'::regprocedure
            AND prosecdef AND proowner = 'portal_definer'::regrole AND proconfig IS NOT NULL);
