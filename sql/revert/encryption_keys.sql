BEGIN;
DROP FUNCTION portal.is_envelope(jsonb);
DROP TABLE portal.key_rotations;
DROP TABLE portal.encryption_keys;
COMMIT;
