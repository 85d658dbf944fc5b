-- The audit trail. audit_logs and audit_changes are partitioned by month on the audit row's time (keys that
-- reference audit_logs carry it), with a default partition so a write never fails for want of a partition.
-- Months are made ahead by portal.ensure_audit_partitions() (mcp-portal-jobs timer) and archived by detaching
-- them from the live tables and attaching them to the *_archive tables: no row is copied or deleted. Archived
-- months are dropped once older than the longest delete_after_days in retention_policies.
BEGIN;
CREATE TABLE portal.retention_policies (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  action_type text NOT NULL UNIQUE,
  retention_days integer NOT NULL CHECK (retention_days > 0),
  archive_after_days integer NOT NULL,
  delete_after_days integer NOT NULL,
  CHECK (retention_days <= archive_after_days AND archive_after_days <= delete_after_days)
);
INSERT INTO portal.retention_policies (action_type, retention_days, archive_after_days, delete_after_days) VALUES
  ('login', 90, 365, 730),
  ('config_updated', 180, 730, 1460),
  ('role_changed', 365, 1460, 2920);

CREATE TABLE portal.audit_logs (
  id uuid NOT NULL DEFAULT gen_random_uuid(),
  logged_at timestamptz NOT NULL DEFAULT now(),
  user_id uuid,
  action text NOT NULL CHECK (action ~ '^[a-z][a-z_]{0,99}$'),
  resource_type text,
  resource_id uuid,
  details jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
  client_ip inet,
  PRIMARY KEY (id, logged_at)
) PARTITION BY RANGE (logged_at);
CREATE TABLE portal.audit_logs_default PARTITION OF portal.audit_logs DEFAULT;
CREATE INDEX idx_audit_logs_logged_at_brin ON portal.audit_logs USING brin (logged_at) WITH (pages_per_range = 128);
CREATE INDEX idx_audit_logs_resource_id ON portal.audit_logs (resource_id);
CREATE INDEX idx_audit_logs_user ON portal.audit_logs (user_id, logged_at);

CREATE TABLE portal.audit_changes (
  id uuid NOT NULL DEFAULT gen_random_uuid(),
  audit_log_id uuid NOT NULL,
  audit_logged_at timestamptz NOT NULL,
  user_id uuid,
  field_name text NOT NULL,
  old_value text,
  new_value text,
  change_type text NOT NULL CHECK (change_type IN ('INSERT', 'UPDATE', 'DELETE')),
  PRIMARY KEY (id, audit_logged_at),
  CONSTRAINT audit_changes_entry FOREIGN KEY (audit_log_id, audit_logged_at) REFERENCES portal.audit_logs (id, logged_at)
) PARTITION BY RANGE (audit_logged_at);
CREATE TABLE portal.audit_changes_default PARTITION OF portal.audit_changes DEFAULT;
CREATE INDEX idx_audit_changes_entry ON portal.audit_changes (audit_log_id, audit_logged_at);

CREATE TABLE portal.audit_logs_archive (LIKE portal.audit_logs INCLUDING ALL) PARTITION BY RANGE (logged_at);
CREATE TABLE portal.audit_changes_archive (
  LIKE portal.audit_changes INCLUDING ALL,
  CONSTRAINT audit_changes_archive_entry FOREIGN KEY (audit_log_id, audit_logged_at)
    REFERENCES portal.audit_logs_archive (id, logged_at)
) PARTITION BY RANGE (audit_logged_at);

-- Tenants append their own entries and read them; admins and reporting read all; nobody updates or deletes.
ALTER TABLE portal.audit_logs ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE portal.audit_changes ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE portal.audit_logs_archive ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
ALTER TABLE portal.audit_changes_archive ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_tenant_read ON portal.audit_logs FOR SELECT TO portal_app USING (user_id = (SELECT portal.tenant()));
CREATE POLICY audit_tenant_append ON portal.audit_logs FOR INSERT TO portal_app WITH CHECK (user_id = (SELECT portal.tenant()));
CREATE POLICY audit_staff_read ON portal.audit_logs FOR SELECT TO portal_admin, portal_reporting USING (true);
CREATE POLICY audit_changes_tenant_read ON portal.audit_changes FOR SELECT TO portal_app
  USING (user_id = (SELECT portal.tenant()));
CREATE POLICY audit_changes_staff_read ON portal.audit_changes FOR SELECT TO portal_admin, portal_reporting USING (true);
CREATE POLICY audit_archive_staff_read ON portal.audit_logs_archive FOR SELECT TO portal_admin, portal_reporting USING (true);
-- Attaching a month to audit_changes_archive checks its foreign key as the owner, under FORCEd RLS.
CREATE POLICY audit_archive_owner_read ON portal.audit_logs_archive FOR SELECT TO portal_owner USING (true);
CREATE POLICY audit_changes_archive_staff_read ON portal.audit_changes_archive FOR SELECT TO portal_admin, portal_reporting
  USING (true);
REVOKE ALL ON portal.audit_logs, portal.audit_changes, portal.audit_logs_archive, portal.audit_changes_archive,
              portal.retention_policies FROM PUBLIC;
GRANT SELECT, INSERT ON portal.audit_logs TO portal_app;
GRANT SELECT ON portal.audit_changes TO portal_app;
GRANT SELECT ON portal.audit_logs, portal.audit_changes, portal.audit_logs_archive, portal.audit_changes_archive,
                portal.retention_policies TO portal_admin, portal_reporting, portal_maintenance;
GRANT INSERT ON portal.audit_logs, portal.audit_changes TO portal_definer, portal_maintenance;
GRANT UPDATE ON portal.retention_policies TO portal_admin;

-- Changes to a configuration's secret (its ciphertext), recorded without the value (REDACTED), under the
-- row's user.
CREATE FUNCTION portal.audit_config_changes() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  entry uuid := gen_random_uuid();
  config portal.user_server_configs := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
  action text := CASE TG_OP WHEN 'INSERT' THEN 'config_created' WHEN 'DELETE' THEN 'config_deleted'
                 ELSE 'config_updated' END;
BEGIN
  IF (CASE TG_OP WHEN 'INSERT' THEN NEW.encrypted_config IS NULL WHEN 'DELETE' THEN OLD.encrypted_config IS NULL
      ELSE OLD.encrypted_config IS NOT DISTINCT FROM NEW.encrypted_config END) THEN
    RETURN NULL;
  END IF;
  IF TG_OP = 'UPDATE' AND OLD.key_version <> NEW.key_version THEN
    action := 'config_reencrypted';  -- key rotation (rotate_keys.py): the same secret under a newer key
  END IF;
  INSERT INTO portal.audit_logs (id, logged_at, user_id, action, resource_type, resource_id, details)
  VALUES (entry, now(), config.user_id, action, 'user_server_config', config.id,
          jsonb_build_object('by', session_user, 'key_version', config.key_version));
  INSERT INTO portal.audit_changes (audit_log_id, audit_logged_at, user_id, field_name, old_value, new_value, change_type)
  VALUES (entry, now(), config.user_id, 'encrypted_config',
          CASE WHEN TG_OP = 'INSERT' THEN NULL ELSE 'REDACTED' END,
          CASE WHEN TG_OP = 'DELETE' THEN NULL ELSE 'REDACTED' END, TG_OP);
  RETURN NULL;
END $$;
ALTER FUNCTION portal.audit_config_changes() OWNER TO portal_definer;
REVOKE ALL ON FUNCTION portal.audit_config_changes() FROM PUBLIC;
CREATE TRIGGER audit_config_changes AFTER INSERT OR UPDATE OR DELETE ON portal.user_server_configs
  FOR EACH ROW EXECUTE FUNCTION portal.audit_config_changes();

-- Month partitions of the live tables from this month to `months_ahead` months after it; returns how many
-- were made. Runs as portal_owner (DDL on its tables).
CREATE FUNCTION portal.ensure_audit_partitions(months_ahead integer DEFAULT 3) RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  made integer := 0;
  month date;
  parent text;
BEGIN
  FOR i IN 0 .. months_ahead LOOP
    month := (date_trunc('month', now() AT TIME ZONE 'UTC') + make_interval(months => i))::date;
    FOREACH parent IN ARRAY ARRAY['audit_logs', 'audit_changes'] LOOP
      IF to_regclass(format('portal.%s_%s', parent, to_char(month, 'YYYY_MM'))) IS NULL THEN
        EXECUTE format('CREATE TABLE portal.%I PARTITION OF portal.%I FOR VALUES FROM (%L) TO (%L)',
                       parent || '_' || to_char(month, 'YYYY_MM'), parent,
                       month::timestamp AT TIME ZONE 'UTC', (month + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        made := made + 1;
      END IF;
    END LOOP;
  END LOOP;
  RETURN made;
END $$;

-- Whole months of partitions that exist after the current one (what the horizon metric reports).
CREATE FUNCTION portal.audit_partition_horizon() RETURNS integer
  LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
  WITH RECURSIVE ahead(n) AS (
    SELECT 0
    UNION ALL
    SELECT n + 1 FROM ahead
     WHERE to_regclass(format('portal.audit_logs_%s', to_char(date_trunc('month', now() AT TIME ZONE 'UTC')
                                                                + make_interval(months => n + 1), 'YYYY_MM'))) IS NOT NULL
       AND n < 120)
  SELECT max(n) FROM ahead
$$;

-- Moves whole months older than the longest retention_days from the live tables to the archive tables and drops
-- archived months older than the longest delete_after_days. Returns the number of months moved and dropped.
-- Detaching takes a brief exclusive lock on the live table: the job's lock_timeout makes it give up, not queue.
CREATE FUNCTION portal.archive_audit_partitions() RETURNS integer
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
  keep_live interval := make_interval(days => (SELECT max(retention_days) FROM portal.retention_policies));
  keep_archived interval := make_interval(days => (SELECT max(delete_after_days) FROM portal.retention_policies));
  done integer := 0;
  part record;
  fk record;
BEGIN
  FOR part IN
    SELECT c.relname, substr(c.relname, length('audit_logs_') + 1) AS month,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)') AS lower_bound,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)') AS upper_bound
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'portal.audit_logs'::regclass AND c.relname ~ '^audit_logs_[0-9]{4}_[0-9]{2}$'
     ORDER BY c.relname
  LOOP
    CONTINUE WHEN part.upper_bound::timestamptz > now() - keep_live;
    EXECUTE format('ALTER TABLE portal.audit_changes DETACH PARTITION portal.%I', 'audit_changes_' || part.month);
    -- Detached, the month keeps its foreign key to the live audit_logs (top-level constraint; dropping it drops
    -- its per-partition pieces); the archive's own key replaces it on attach.
    FOR fk IN SELECT conname FROM pg_constraint
               WHERE conrelid = format('portal.%I', 'audit_changes_' || part.month)::regclass AND contype = 'f'
                 AND conparentid = 0 LOOP
      EXECUTE format('ALTER TABLE portal.%I DROP CONSTRAINT %I', 'audit_changes_' || part.month, fk.conname);
    END LOOP;
    EXECUTE format('ALTER TABLE portal.audit_logs DETACH PARTITION portal.%I', part.relname);
    EXECUTE format('ALTER TABLE portal.audit_logs_archive ATTACH PARTITION portal.%I FOR VALUES FROM (%L) TO (%L)',
                   part.relname, part.lower_bound, part.upper_bound);
    EXECUTE format('ALTER TABLE portal.audit_changes_archive ATTACH PARTITION portal.%I FOR VALUES FROM (%L) TO (%L)',
                   'audit_changes_' || part.month, part.lower_bound, part.upper_bound);
    done := done + 1;
  END LOOP;
  FOR part IN
    SELECT c.relname, substr(c.relname, length('audit_logs_') + 1) AS month,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)') AS upper_bound
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'portal.audit_logs_archive'::regclass
  LOOP
    CONTINUE WHEN part.upper_bound::timestamptz > now() - keep_archived;
    -- The referencing month first; a referenced partition must be detached before it can be dropped.
    EXECUTE format('DROP TABLE portal.%I', 'audit_changes_' || part.month);
    EXECUTE format('ALTER TABLE portal.audit_logs_archive DETACH PARTITION portal.%I', part.relname);
    EXECUTE format('DROP TABLE portal.%I', part.relname);
    done := done + 1;
  END LOOP;
  RETURN done;
END $$;
REVOKE ALL ON FUNCTION portal.ensure_audit_partitions(integer), portal.archive_audit_partitions(),
                       portal.audit_partition_horizon() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION portal.ensure_audit_partitions(integer), portal.archive_audit_partitions(),
                          portal.audit_partition_horizon() TO portal_maintenance;
GRANT EXECUTE ON FUNCTION portal.audit_partition_horizon() TO monitoring;
DO $$ BEGIN PERFORM portal.ensure_audit_partitions(); END $$;
COMMIT;
