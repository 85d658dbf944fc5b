-- The tenant of a transaction in a setting the app cannot write (extension/portal_tenant, built on every
-- database host by the deploy). SET, set_config() or ALTER ROLE ... SET of portal_tenant.user_id fail for the
-- app's roles; portal.set_tenant() checks the user is active and sets it for the transaction only.
-- portal.set_tenant() and portal.tenant() keep their names and become plain SQL calls of the module's, which the
-- planner inlines: each policy is `user_id = portal.tenant()`, an index condition computed once per scan, with
-- no InitPlan and no SECURITY DEFINER call. The HMAC seal, its key and the key's rotation go.
BEGIN;
CREATE EXTENSION portal_tenant;

CREATE OR REPLACE FUNCTION portal.set_tenant(user_id uuid) RETURNS uuid
  LANGUAGE sql VOLATILE SECURITY INVOKER RETURN portal_tenant.set_tenant(user_id);
CREATE OR REPLACE FUNCTION portal.tenant() RETURNS uuid
  LANGUAGE sql STABLE SECURITY INVOKER PARALLEL RESTRICTED RETURN portal_tenant.tenant();

ALTER POLICY users_tenant_read ON portal.users USING (id = portal.tenant());
ALTER POLICY users_tenant_update ON portal.users USING (id = portal.tenant()) WITH CHECK (id = portal.tenant());
ALTER POLICY configs_tenant ON portal.user_server_configs
  USING (user_id = portal.tenant()) WITH CHECK (user_id = portal.tenant());
ALTER POLICY sessions_tenant ON portal.user_sessions
  USING (user_id = portal.tenant()) WITH CHECK (user_id = portal.tenant());
ALTER POLICY audit_tenant_read ON portal.audit_logs USING (user_id = portal.tenant());
ALTER POLICY audit_tenant_append ON portal.audit_logs
  WITH CHECK (user_id = portal.tenant() AND action !~ '^(config|key|retention_policy)_');
ALTER POLICY audit_changes_tenant_read ON portal.audit_changes USING (user_id = portal.tenant());

-- Nothing outside the database calls or reads them: the seal was portal.tenant()'s, the key the seal's.
-- squawk-ignore ban-drop-function
DROP FUNCTION portal.tenant_seal(text, bytea, bytea);
-- squawk-ignore ban-drop-function
DROP FUNCTION portal.rotate_tenant_key();
-- squawk-ignore ban-drop-table
DROP TABLE portal.tenant_key;
COMMIT;
