SELECT id, logged_at, user_id, action, resource_type, resource_id, details, client_ip FROM portal.audit_logs WHERE false;
SELECT id, audit_log_id, audit_logged_at, user_id, field_name, old_value, new_value, change_type
  FROM portal.audit_changes WHERE false;
SELECT 1 / (SELECT count(*)::int FROM portal.retention_policies WHERE action_type IN ('login', 'config_updated', 'role_changed')) ;
SELECT 1 / (portal.audit_partition_horizon() >= 2)::int;
