-- Back to the sealed context: tenant_sealed's deploy makes the key and the plpgsql functions again (a new key),
-- the policies go back to their InitPlan form, and the module's extension goes.
\ir ../deploy/tenant_sealed.sql
BEGIN;
ALTER POLICY users_tenant_read ON portal.users USING (id = (SELECT portal.tenant()));
ALTER POLICY users_tenant_update ON portal.users
  USING (id = (SELECT portal.tenant())) WITH CHECK (id = (SELECT portal.tenant()));
ALTER POLICY configs_tenant ON portal.user_server_configs
  USING (user_id = (SELECT portal.tenant())) WITH CHECK (user_id = (SELECT portal.tenant()));
ALTER POLICY sessions_tenant ON portal.user_sessions
  USING (user_id = (SELECT portal.tenant())) WITH CHECK (user_id = (SELECT portal.tenant()));
ALTER POLICY audit_tenant_read ON portal.audit_logs USING (user_id = (SELECT portal.tenant()));
ALTER POLICY audit_tenant_append ON portal.audit_logs
  WITH CHECK (user_id = (SELECT portal.tenant()) AND action !~ '^(config|key|retention_policy)_');
ALTER POLICY audit_changes_tenant_read ON portal.audit_changes USING (user_id = (SELECT portal.tenant()));
DROP EXTENSION portal_tenant;
COMMIT;
