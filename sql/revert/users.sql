BEGIN;
\set tables 'portal.users'
\ir ../lib/refuse_dropping_rows.sql
DROP VIEW portal.users_masked;
DROP TABLE portal.users;
COMMIT;
