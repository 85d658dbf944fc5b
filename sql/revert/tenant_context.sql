BEGIN;
DROP POLICY users_tenant_read ON portal.users;
DROP POLICY users_tenant_update ON portal.users;
DROP POLICY users_admin ON portal.users;
DROP POLICY users_reporting ON portal.users;
DROP FUNCTION portal.register_user(text, text, text);
DROP FUNCTION portal.tenant();
DROP FUNCTION portal.set_tenant(uuid);
COMMIT;
