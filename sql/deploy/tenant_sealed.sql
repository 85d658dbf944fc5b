-- A tenant context the app cannot forge. portal.set_tenant() seals the context it stores with an HMAC-SHA256
-- over the tenant, this connection's backend pid and this transaction's start time, keyed by a secret only
-- portal_definer reads (portal.tenant_key, made here from the server's strong random source). portal.tenant()
-- (SECURITY DEFINER, once per statement as the policies' InitPlan) accepts only a seal it can recompute: a
-- context written by hand with set_config (for an active user or not), copied from another transaction or made
-- on another connection is refused with the same errors as before. No table is written: replicas serve it too.
BEGIN;
CREATE TABLE portal.tenant_key (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  inner_pad bytea NOT NULL CHECK (length(inner_pad) = 64),  -- the key XOR 0x36 (HMAC's ipad), 64 bytes
  outer_pad bytea NOT NULL CHECK (length(outer_pad) = 64)   -- the key XOR 0x5c (HMAC's opad)
);
ALTER TABLE portal.tenant_key OWNER TO portal_definer;
REVOKE ALL ON portal.tenant_key FROM PUBLIC;

-- A new key: 32 bytes from two v4 UUIDs (244 bits of pg_strong_random()), zero-padded to SHA-256's 64-byte
-- block. Made here; run again (as postgres) on a restored copy, so staging never seals with production's key.
-- Transactions running with a context sealed by the old key fail their next statement.
CREATE FUNCTION portal.rotate_tenant_key() RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  key bytea := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '') || repeat('00', 32), 'hex');
  inner_pad bytea := key;
  outer_pad bytea := key;
BEGIN
  FOR i IN 0..63 LOOP
    inner_pad := set_byte(inner_pad, i, get_byte(key, i) # 54);
    outer_pad := set_byte(outer_pad, i, get_byte(key, i) # 92);
  END LOOP;
  INSERT INTO portal.tenant_key AS k (inner_pad, outer_pad) VALUES (inner_pad, outer_pad)
    ON CONFLICT (singleton) DO UPDATE SET inner_pad = excluded.inner_pad, outer_pad = excluded.outer_pad;
END $$;
ALTER FUNCTION portal.rotate_tenant_key() OWNER TO portal_definer;
REVOKE ALL ON FUNCTION portal.rotate_tenant_key() FROM PUBLIC;
SELECT portal.rotate_tenant_key();

-- The seal of a tenant in this transaction on this connection. A SQL-standard body: its names are bound when it
-- is made, whatever search_path its caller has.
CREATE FUNCTION portal.tenant_seal(tenant text, inner_pad bytea, outer_pad bytea) RETURNS text
  LANGUAGE sql STABLE PARALLEL RESTRICTED
  RETURN encode(sha256(outer_pad || sha256(inner_pad || textsend(tenant) || int4send(pg_backend_pid())
                                           || timestamptz_send(now()))), 'hex');
ALTER FUNCTION portal.tenant_seal(text, bytea, bytea) OWNER TO portal_definer;
REVOKE ALL ON FUNCTION portal.tenant_seal(text, bytea, bytea) FROM PUBLIC;

CREATE OR REPLACE FUNCTION portal.set_tenant(user_id uuid) RETURNS uuid
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  context text;
BEGIN
  SELECT u.id::text || '/' || portal.tenant_seal(u.id::text, k.inner_pad, k.outer_pad) INTO context
    FROM portal.users u, portal.tenant_key k
   WHERE u.id = set_tenant.user_id AND u.is_active;
  IF context IS NULL THEN
    RAISE EXCEPTION 'portal.set_tenant: no active user %', coalesce(user_id::text, 'NULL')
      USING ERRCODE = 'insufficient_privilege';
  END IF;
  PERFORM set_config('portal.tenant', context, true);
  RETURN user_id;
END $$;

CREATE OR REPLACE FUNCTION portal.tenant() RETURNS uuid
  LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  context text := current_setting('portal.tenant', true);
  tenant text := split_part(context, '/', 1);
  seal text;
BEGIN
  IF coalesce(context, '') = '' THEN
    RAISE EXCEPTION 'no tenant set for this transaction'
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'BEGIN; SELECT portal.set_tenant(<user id>); ...; COMMIT (in the same transaction)';
  END IF;
  SELECT portal.tenant_seal(tenant, k.inner_pad, k.outer_pad) INTO seal FROM portal.tenant_key k;
  IF split_part(context, '/', 2) IS DISTINCT FROM seal THEN
    RAISE EXCEPTION 'the tenant context was not set by this transaction (set at session level, left over, or not by portal.set_tenant())'
      USING ERRCODE = 'insufficient_privilege',
            HINT = 'set it with portal.set_tenant() inside each transaction, never with SET or set_config';
  END IF;
  RETURN tenant::uuid;
END $$;
ALTER FUNCTION portal.tenant() OWNER TO portal_definer;
COMMIT;
