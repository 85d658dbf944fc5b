\echo Use "CREATE EXTENSION portal_tenant" to load this file. \quit

-- Checks that the user is active and makes it the tenant of this transaction.
CREATE FUNCTION set_tenant(user_id uuid) RETURNS uuid
  LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'portal_tenant_set';

-- This transaction's tenant; fails when set_tenant() has not set one in it.
CREATE FUNCTION tenant() RETURNS uuid
  LANGUAGE c STABLE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'portal_tenant_get';

-- The functions stay the bootstrap superuser's (a trusted extension's script runs as it). Granted here, so that
-- a dump restored elsewhere (the staging rebuild) makes the same grants with the extension.
REVOKE ALL ON FUNCTION set_tenant(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION set_tenant(uuid) TO portal_app, portal_admin;
GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;
