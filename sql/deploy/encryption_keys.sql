-- Data keys for the portal's envelope encryption (hostside/envelope.py, AES-256-GCM outside the database):
-- each version's key is stored only as wrapped by the KMS master key; the plaintext key never enters
-- PostgreSQL. At most one version is active. key_rotations records re-encryption progress (rotate_keys.py).
BEGIN;
CREATE TABLE portal.encryption_keys (
  version integer PRIMARY KEY CHECK (version > 0),
  kms_key_id text NOT NULL,
  wrapped_key bytea NOT NULL,
  is_active boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  activated_at timestamptz,
  retired_at timestamptz
);
CREATE UNIQUE INDEX encryption_keys_one_active ON portal.encryption_keys ((true)) WHERE is_active;

CREATE TABLE portal.key_rotations (
  to_version integer PRIMARY KEY REFERENCES portal.encryption_keys (version),
  started_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz,
  finished_at timestamptz,
  rows_done bigint NOT NULL DEFAULT 0
);

-- The envelope's shape: exactly {v: 1, key_version, nonce (12 bytes), ciphertext (>= the 16-byte tag)}, base64.
CREATE FUNCTION portal.is_envelope(envelope jsonb) RETURNS boolean
  LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT jsonb_typeof(envelope) = 'object'
     AND envelope ?& ARRAY['v', 'key_version', 'nonce', 'ciphertext']
     AND envelope - ARRAY['v', 'key_version', 'nonce', 'ciphertext'] = '{}'::jsonb
     AND envelope -> 'v' = '1'::jsonb
     AND jsonb_typeof(envelope -> 'key_version') = 'number'
     AND coalesce(envelope ->> 'nonce' ~ '^[A-Za-z0-9+/]{16}$', false)
     AND coalesce(envelope ->> 'ciphertext' ~ '^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$', false)
     AND length(envelope ->> 'ciphertext') >= 24
$$;

REVOKE ALL ON portal.encryption_keys, portal.key_rotations FROM PUBLIC;
GRANT SELECT ON portal.encryption_keys TO portal_app, portal_admin;
GRANT SELECT, INSERT, UPDATE ON portal.encryption_keys, portal.key_rotations TO portal_maintenance;
GRANT SELECT ON portal.key_rotations TO portal_admin, portal_reporting;
COMMIT;
