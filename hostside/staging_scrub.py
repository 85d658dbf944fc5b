#!/usr/bin/python3
"""Scrub a restored copy of production's portal database for staging (rebuild_staging.py, docs/backups.md), run as
postgres against the rebuild's private scratch cluster, which listens on no address and archives nothing:

    staging_scrub.py --port 5433 --database portal

In one transaction, with triggers off (the audit trigger would copy the old values into new audit rows):
e-mails, display names and Azure object ids become pseudonyms derived from each user's id (the same user gets the
same pseudonym on every rebuild, and every join by id still holds); users' metadata is emptied; sessions and their
token hashes are dropped; audit details, client addresses and changed values are cleared in every audit table,
archived months and detached ones included; production's data keys go, and every encrypted config is replaced by
a synthetic one sealed with a new data key from staging's own KMS key (hostside/rotate_keys.py's configuration:
production's master key is never asked for). Then the dump of the scrubbed database is written for the new
cluster; the scratch cluster, the only place production's values were, is dropped by the caller.
"""

import argparse
import json
import sys

from hostside import envelope, rotate_keys

# Rows whose values identify a person, and what each becomes. Pseudonyms are of the user's id, which staging keeps.
USERS = ("update portal.users set email = 'user-' || id || '@staging.invalid', "
         "display_name = 'User ' || left(id::text, 8), azure_oid = 'staging-' || id, metadata = '{}' "
         "where email <> 'user-' || id || '@staging.invalid' or display_name <> 'User ' || left(id::text, 8) "
         "or azure_oid <> 'staging-' || id or metadata <> '{}'")
# Every table of an audit trail's shape, attached or not: the live months, the archive and detached months.
AUDIT_TABLES = ("select c.oid::regclass::text, a.attname from pg_class c join pg_attribute a on a.attrelid = c.oid "
                "join pg_namespace n on n.oid = c.relnamespace where n.nspname = 'portal' and c.relkind = 'r' "
                "and a.attnum > 0 and not a.attisdropped "
                "and a.attname in ('details', 'client_ip', 'old_value', 'new_value') order by 1, 2")
CLEARED = {"details": "'{}'::jsonb", "client_ip": "null", "old_value": "'SCRUBBED'", "new_value": "'SCRUBBED'"}
CONFIGS = rotate_keys.TABLE
SYNTHETIC = b'{"synthetic": true}'


def scrub(conn, kms, kms_key_id):
    """Scrubs in one transaction; {what: rows changed}."""
    done = {}
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")  # no trigger: the audit trail stays as scrubbed
        done["users pseudonymized"] = conn.execute(USERS).rowcount
        done["sessions dropped"] = conn.execute("delete from portal.user_sessions").rowcount
        for table, column in conn.execute(AUDIT_TABLES).fetchall():
            cleared = conn.execute(f"update {table} set {column} = {CLEARED[column]} "  # names from the catalog
                                   f"where {column} is distinct from {CLEARED[column]} and {column} is not null")
            done[f"{table}.{column} cleared"] = cleared.rowcount
        sealed = [row[0] for row in conn.execute(
            f"select id from portal.{CONFIGS} where encrypted_config is not null order by id").fetchall()]
        conn.execute(f"update portal.{CONFIGS} set encrypted_config = null, key_version = null, config_metadata = '{{}}'")
        conn.execute("delete from portal.key_rotations")
        done["production data keys dropped"] = conn.execute("delete from portal.encryption_keys").rowcount
        data_key, wrapped = envelope.new_data_key(kms, kms_key_id)
        conn.execute("insert into portal.encryption_keys(version, kms_key_id, wrapped_key, is_active, activated_at) "
                     "values (1, %s, %s, true, now())", (kms_key_id, wrapped))
        with conn.cursor() as cursor:
            cursor.executemany(
                f"update portal.{CONFIGS} set encrypted_config = %s::jsonb, key_version = 1 where id = %s",
                [(json.dumps(envelope.seal(SYNTHETIC, data_key, 1, CONFIGS, str(row_id))), row_id) for row_id in sealed])
        done["configs replaced by synthetic ones"] = len(sealed)
    return done


def main(argv):
    parser = argparse.ArgumentParser(prog="mcp-staging-scrub", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="the scratch cluster's port")
    parser.add_argument("--database", required=True)
    parser.add_argument("--kms-config", default=rotate_keys.CONFIG, help="staging's KMS key and keys (rotate_keys)")
    args = parser.parse_args(argv[1:])
    try:
        import psycopg
        config = rotate_keys.load_config(args.kms_config)
        with psycopg.connect(dbname=args.database, port=args.port, application_name="staging_scrub",
                             autocommit=True) as conn:
            done = scrub(conn, rotate_keys.kms_client(config), config["kms_key_id"])
    except Exception as exc:  # one line, no traceback, and no value of a row (a database error's detail may hold one)
        message = getattr(getattr(exc, "diag", None), "message_primary", None) or str(exc)
        print(f"staging_scrub: {type(exc).__name__}: {' '.join(message.split())}", file=sys.stderr)
        return 1
    for what, rows in done.items():
        print(f"staging_scrub: {what}: {rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
