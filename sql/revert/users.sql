BEGIN;
DROP VIEW portal.users_masked;
DROP TABLE portal.users;
COMMIT;
