-- tenant_module drops the key and the seal: once it is deployed, only its extension is left to see here.
DO $$ BEGIN
  IF to_regclass('portal.tenant_key') IS NULL THEN
    PERFORM 1 / (SELECT count(*)::int FROM pg_extension WHERE extname = 'portal_tenant');
  ELSE
    PERFORM 1 / (SELECT count(*)::int FROM portal.tenant_key);
    PERFORM 1 / (NOT has_table_privilege('portal_app', 'portal.tenant_key', 'SELECT'))::int;
    PERFORM 1 / (SELECT count(*)::int FROM pg_proc WHERE oid = 'portal.tenant()'::regprocedure
                 AND prosecdef AND proowner = 'portal_definer'::regrole AND proconfig IS NOT NULL);
  END IF;
END $$;
