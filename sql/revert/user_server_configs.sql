BEGIN;
DROP TABLE portal.user_server_configs;
COMMIT;
