BEGIN;
\set tables 'portal.encryption_keys'
\ir ../lib/refuse_dropping_rows.sql
DROP FUNCTION portal.is_envelope(jsonb);
DROP TABLE portal.key_rotations;
DROP TABLE portal.encryption_keys;
COMMIT;
