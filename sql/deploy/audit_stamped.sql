-- The database stamps each audit row: the app names what happened (user, action, resource, details, client
-- address) and the row's id and time are the database's (column privileges: the app cannot write them), so no
-- row is backdated, dated ahead (into the default partition, where it would stop that month's partition from
-- being made) or given a chosen id. Nor may the app write the actions the database and its jobs record
-- (config_*: the configs' trigger; key_*: key rotation; retention_policy_*: the retention guard).
BEGIN;
REVOKE INSERT ON portal.audit_logs FROM portal_app;
GRANT INSERT (user_id, action, resource_type, resource_id, details, client_ip) ON portal.audit_logs TO portal_app;
ALTER POLICY audit_tenant_append ON portal.audit_logs
  WITH CHECK (user_id = (SELECT portal.tenant()) AND action !~ '^(config|key|retention_policy)_');
COMMIT;
