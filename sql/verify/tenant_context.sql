SELECT 'portal.set_tenant(uuid)'::regprocedure, 'portal.tenant()'::regprocedure,
       'portal.register_user(text, text, text)'::regprocedure;
SELECT 1 / (SELECT count(*)::int FROM pg_proc WHERE oid = 'portal.set_tenant(uuid)'::regprocedure
            AND prosecdef AND proowner = 'portal_definer'::regrole AND proconfig IS NOT NULL);
SELECT 1 / (SELECT count(*)::int FROM pg_policies WHERE schemaname = 'portal' AND tablename = 'users');
