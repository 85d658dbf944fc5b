SELECT 1 / (count(*) = 2)::int FROM pg_index WHERE indisvalid
   AND indexrelid IN ('portal.idx_configs_admin_view'::regclass, 'portal.idx_servers_search'::regclass);
