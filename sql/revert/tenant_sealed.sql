-- Back to the context bound to the transaction's start time only (tenant_context's functions, as they were).
BEGIN;
CREATE OR REPLACE FUNCTION portal.set_tenant(user_id uuid) RETURNS uuid
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM portal.users u WHERE u.id = set_tenant.user_id AND u.is_active) THEN
    RAISE EXCEPTION 'portal.set_tenant: no active user %', coalesce(user_id::text, 'NULL')
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  PERFORM set_config('portal.tenant', extract(epoch FROM now())::text || '/' || user_id::text, true);
  RETURN user_id;
END $$;

CREATE OR REPLACE FUNCTION portal.tenant() RETURNS uuid
  LANGUAGE plpgsql STABLE SECURITY INVOKER PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
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
ALTER FUNCTION portal.tenant() OWNER TO portal_owner;
DROP FUNCTION portal.tenant_seal(text, bytea, bytea);
DROP FUNCTION portal.rotate_tenant_key();
DROP TABLE portal.tenant_key;
COMMIT;
