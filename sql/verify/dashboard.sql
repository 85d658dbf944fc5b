SELECT user_id, email, enabled_servers, running_servers, last_activity FROM portal.mv_user_dashboard WHERE false;
SELECT 1 / (SELECT count(*)::int FROM pg_class WHERE oid = 'portal.my_dashboard'::regclass
            AND reloptions @> ARRAY['security_invoker=true']);
