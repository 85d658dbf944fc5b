-- Retention policies decide when audit months are archived and dropped (portal.archive_audit_partitions()):
-- portal_admin may change them, but each change is audited (who, old and new values) and bounded by a floor, so
-- no update can make the next job drop the audit trail: a year kept in all, 90 days before archiving, 30 live.
-- Rows are neither added nor removed by anyone but the owner (the job reads the longest of each).
BEGIN;
CREATE FUNCTION portal.guard_retention_policy() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  IF NEW.retention_days < 30 OR NEW.archive_after_days < 90 OR NEW.delete_after_days < 365 THEN
    RAISE EXCEPTION 'retention policy %: (%, %, %) is below the floor (retention_days 30, archive_after_days 90, delete_after_days 365)',
      NEW.action_type, NEW.retention_days, NEW.archive_after_days, NEW.delete_after_days
      USING ERRCODE = 'check_violation';
  END IF;
  IF NEW IS DISTINCT FROM OLD THEN
    INSERT INTO portal.audit_logs (action, resource_type, details)
    VALUES ('retention_policy_changed', 'retention_policy',
            jsonb_build_object('by', session_user, 'action_type', OLD.action_type,
                               'old', jsonb_build_array(OLD.retention_days, OLD.archive_after_days, OLD.delete_after_days),
                               'new', jsonb_build_array(NEW.retention_days, NEW.archive_after_days, NEW.delete_after_days)));
  END IF;
  RETURN NEW;
END $$;
ALTER FUNCTION portal.guard_retention_policy() OWNER TO portal_definer;
REVOKE ALL ON FUNCTION portal.guard_retention_policy() FROM PUBLIC;
CREATE TRIGGER guard_retention_policy BEFORE UPDATE ON portal.retention_policies
  FOR EACH ROW EXECUTE FUNCTION portal.guard_retention_policy();
REVOKE UPDATE ON portal.retention_policies FROM portal_admin;
GRANT UPDATE (retention_days, archive_after_days, delete_after_days) ON portal.retention_policies TO portal_admin;
COMMIT;
