BEGIN;
DO $$ BEGIN
  EXECUTE format('ALTER DATABASE %I RESET search_path', current_database());
END $$;
DROP SCHEMA portal;
COMMIT;
