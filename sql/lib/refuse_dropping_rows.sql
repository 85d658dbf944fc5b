-- Included (\ir) by the reverts of changes whose tables hold the portal's data, with :tables set to their names
-- (space-separated): in the revert's transaction, refuses to drop a table that holds rows unless the operator
-- consents with PGOPTIONS='... -c portal.revert_drops_rows=on' (docs/schema.md).
SET LOCAL portal.revert_checks TO :'tables';
DO $$
DECLARE
  checked text;
  held boolean;
BEGIN
  IF current_setting('portal.revert_drops_rows', true) IS NOT DISTINCT FROM 'on' THEN
    RETURN;
  END IF;
  FOREACH checked IN ARRAY string_to_array(current_setting('portal.revert_checks'), ' ') LOOP
    -- The owner counts every row without its FORCEd RLS; undone with the transaction, which drops or rolls back.
    EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', checked::regclass);
    EXECUTE format('SELECT EXISTS (SELECT FROM %s)', checked::regclass) INTO held;
    IF held THEN
      RAISE EXCEPTION 'revert refused: % holds rows; dump them first, then revert with PGOPTIONS=''-c portal.revert_drops_rows=on'' (docs/schema.md)',
        checked;
    END IF;
  END LOOP;
END $$;
