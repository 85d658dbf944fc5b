BEGIN;
ALTER POLICY audit_tenant_append ON portal.audit_logs WITH CHECK (user_id = (SELECT portal.tenant()));
REVOKE INSERT (user_id, action, resource_type, resource_id, details, client_ip) ON portal.audit_logs FROM portal_app;
GRANT INSERT ON portal.audit_logs TO portal_app;
COMMIT;
