SELECT 1 / (SELECT count(*)::int FROM pg_namespace WHERE nspname = 'portal' AND nspowner = 'portal_owner'::regrole);
