-- Indexes built without blocking writes. CREATE INDEX CONCURRENTLY cannot run in a transaction, so this change
-- stands alone with no BEGIN/COMMIT. A failed build leaves an INVALID index behind and sqitch records nothing,
-- so each build first drops what an earlier failed attempt left.
SET client_min_messages = warning;
DROP INDEX CONCURRENTLY IF EXISTS portal.idx_configs_admin_view;
-- Not IF NOT EXISTS: that would keep an INVALID leftover (dropped just above).
-- squawk-ignore prefer-robust-stmts
CREATE INDEX CONCURRENTLY idx_configs_admin_view ON portal.user_server_configs (created_at, container_state)
  WHERE container_state IN ('running', 'error');
DROP INDEX CONCURRENTLY IF EXISTS portal.idx_servers_search;
-- squawk-ignore prefer-robust-stmts
CREATE INDEX CONCURRENTLY idx_servers_search ON portal.mcp_servers
  USING gin (to_tsvector('english', name || ' ' || display_name || ' ' || description));
