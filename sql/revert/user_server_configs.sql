BEGIN;
\set tables 'portal.user_server_configs'
\ir ../lib/refuse_dropping_rows.sql
DROP TABLE portal.user_server_configs;
COMMIT;
