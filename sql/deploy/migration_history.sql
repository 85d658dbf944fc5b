-- The assessment's migration_history interface (version, applied_at, checksum, rollback), answered from
-- sqitch's own registry rather than a second tracker.
BEGIN;
CREATE VIEW portal.migration_history WITH (security_invoker = true) AS
  SELECT c.change AS version, c.committed_at AS applied_at, c.script_hash AS checksum,
         'sqitch revert --to ' || coalesce(
           (SELECT p.change FROM sqitch.changes p WHERE p.project = c.project AND p.committed_at < c.committed_at
             ORDER BY p.committed_at DESC LIMIT 1), '@ROOT') AS rollback,
         c.note
    FROM sqitch.changes c
   WHERE c.project = 'mcp_portal';
REVOKE ALL ON portal.migration_history FROM PUBLIC;
GRANT USAGE ON SCHEMA sqitch TO portal_admin, portal_reporting;
GRANT SELECT ON sqitch.changes TO portal_admin, portal_reporting;
GRANT SELECT ON portal.migration_history TO portal_admin, portal_reporting;
COMMIT;
