DROP INDEX CONCURRENTLY IF EXISTS portal.idx_servers_search;
DROP INDEX CONCURRENTLY IF EXISTS portal.idx_configs_admin_view;
