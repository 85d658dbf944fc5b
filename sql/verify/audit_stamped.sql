SELECT 1 / (NOT has_column_privilege('portal_app', 'portal.audit_logs', 'logged_at', 'INSERT'))::int;
SELECT 1 / (NOT has_column_privilege('portal_app', 'portal.audit_logs', 'id', 'INSERT'))::int;
