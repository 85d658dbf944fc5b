-- The module loaded (a call loads it), its setting superuser-only, set_tenant() not for every role, and the six
-- tenant policies with a USING clause in the plain form.
DO $$ BEGIN PERFORM portal_tenant.tenant(); EXCEPTION WHEN insufficient_privilege THEN NULL; END $$;
SELECT 1 / (SELECT count(*)::int FROM pg_settings WHERE name = 'portal_tenant.user_id' AND context = 'superuser');
SELECT 1 / (NOT has_function_privilege('portal_reporting', 'portal_tenant.set_tenant(uuid)', 'EXECUTE'))::int;
SELECT 1 / (SELECT count(*) = 6 FROM pg_policies
             WHERE schemaname = 'portal' AND qual ~ '^\((user_)?id = (portal\.)?tenant\(\)\)$')::int;
