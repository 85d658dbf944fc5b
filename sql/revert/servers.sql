BEGIN;
DROP TABLE portal.mcp_servers;
COMMIT;
