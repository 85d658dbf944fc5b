BEGIN;
DROP FUNCTION portal.session_user_id(bytea);
DROP TABLE portal.user_sessions;
COMMIT;
