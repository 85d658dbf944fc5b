SELECT id, user_id, token_sha256, created_at, expires_at, is_active, client_ip, user_agent
  FROM portal.user_sessions WHERE false;
SELECT 'portal.session_user_id(bytea)'::regprocedure;
