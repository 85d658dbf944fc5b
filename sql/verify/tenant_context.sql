SELECT 'portal.set_tenant(uuid)'::regprocedure, 'portal.tenant()'::regprocedure,
       'portal.register_user(text, text, text)'::regprocedure;
-- set_tenant() is SECURITY DEFINER with its search_path pinned, until tenant_module makes it a plain call of the
-- module's set_tenant().
SELECT 1 / (SELECT count(*)::int FROM pg_proc WHERE oid = 'portal.set_tenant(uuid)'::regprocedure
            AND (prosecdef AND proowner = 'portal_definer'::regrole AND proconfig IS NOT NULL
                 OR NOT prosecdef AND proconfig IS NULL
                    AND EXISTS (SELECT FROM pg_extension WHERE extname = 'portal_tenant')));
SELECT 1 / (SELECT count(*)::int FROM pg_policies WHERE schemaname = 'portal' AND tablename = 'users');
