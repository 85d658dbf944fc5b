-- The tenant of a transaction. portal.set_tenant() validates the user once (exists, active) and binds the
-- context to the transaction that set it; portal.tenant() is what policies read: no table access, so it costs
-- nothing per row and the tenant policy stays the indexable `user_id = (SELECT portal.tenant())`.
-- The binding (this transaction's start time, now()) makes a context that outlives its transaction useless:
-- a client that SETs portal.tenant at session level, or calls set_config(..., false), cannot hand its tenant
-- to the next client PgBouncer gives that server connection; portal.tenant() refuses it.
-- Functions that must read users without recursing into the policies that call them are owned by
-- portal_definer (NOLOGIN, BYPASSRLS) and pin their search_path.
BEGIN;
CREATE FUNCTION portal.set_tenant(user_id uuid) RETURNS uuid
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM portal.users u WHERE u.id = set_tenant.user_id AND u.is_active) THEN
    RAISE EXCEPTION 'portal.set_tenant: no active user %', coalesce(user_id::text, 'NULL')
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  PERFORM set_config('portal.tenant', extract(epoch FROM now())::text || '/' || user_id::text, true);
  RETURN user_id;
END $$;
ALTER FUNCTION portal.set_tenant(uuid) OWNER TO portal_definer;

CREATE FUNCTION portal.tenant() RETURNS uuid
  LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  context text := current_setting('portal.tenant', true);
BEGIN
  IF coalesce(context, '') = '' THEN
    RAISE EXCEPTION 'no tenant set for this transaction'
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'BEGIN; SELECT portal.set_tenant(<user id>); ...; COMMIT (in the same transaction)';
  END IF;
  IF split_part(context, '/', 1) IS DISTINCT FROM extract(epoch FROM now())::text THEN
    RAISE EXCEPTION 'the tenant context was not set by this transaction (set at session level, or left over)'
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'set it with portal.set_tenant() inside each transaction, never with SET';
  END IF;
  RETURN split_part(context, '/', 2)::uuid;
END $$;

-- First login: the app registers the user it authenticated (Azure object id) and gets its id back.
CREATE FUNCTION portal.register_user(azure_oid text, email text, display_name text) RETURNS uuid
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
  INSERT INTO portal.users AS u (azure_oid, email, display_name)
  VALUES (register_user.azure_oid, register_user.email, register_user.display_name)
  ON CONFLICT (azure_oid) DO UPDATE SET email = excluded.email, display_name = excluded.display_name, updated_at = now()
  RETURNING u.id
$$;
ALTER FUNCTION portal.register_user(text, text, text) OWNER TO portal_definer;

REVOKE ALL ON FUNCTION portal.set_tenant(uuid), portal.register_user(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION portal.set_tenant(uuid), portal.register_user(text, text, text) TO portal_app;
GRANT EXECUTE ON FUNCTION portal.set_tenant(uuid) TO portal_admin;

CREATE POLICY users_tenant_read ON portal.users FOR SELECT TO portal_app USING (id = (SELECT portal.tenant()));
CREATE POLICY users_tenant_update ON portal.users FOR UPDATE TO portal_app
  USING (id = (SELECT portal.tenant())) WITH CHECK (id = (SELECT portal.tenant()));
CREATE POLICY users_admin ON portal.users FOR ALL TO portal_admin USING (true) WITH CHECK (true);
CREATE POLICY users_reporting ON portal.users FOR SELECT TO portal_reporting USING (true);
COMMIT;
