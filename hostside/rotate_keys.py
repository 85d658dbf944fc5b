#!/usr/bin/python3
"""Rotation of the MCP Portal's data keys (envelope.py), run on the primary as OS user postgres.

    rotate_keys.py [--config FILE] new-key                               a new data key becomes the active one
    rotate_keys.py [--config FILE] reencrypt [--batch N] [--max-batches N]   re-seal every row with the active key
    rotate_keys.py [--config FILE] status                                rows per key version, as JSON

reencrypt is online and resumable: one short transaction per batch, rows locked by the app are skipped and
picked up by a later pass, and a rerun continues where an interrupted one stopped. A row that does not open
stops the run (exit 1) with its batch rolled back. Configuration: /etc/mcp-portal/key-rotation.json.
"""

import argparse
import json
import re
import sys
import time

from hostside import envelope, layout

CONFIG = layout.config("key-rotation.json")
REQUIRED = ("database", "role", "kms_key_id", "region", "access_key_id", "secret_access_key")
ROLE = re.compile(r"^[a-z_][a-z0-9_]*$")  # it goes into the connection's options string unquoted
TABLE = "user_server_configs"
LOCKED_WAIT_S = 1


class RotationError(Exception):
    """One line for the operator: what failed, naming the config key or the row."""


def load_config(path):
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise RotationError(f"config file {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise RotationError(f"config file {path} cannot be read: {exc}") from None
    if not isinstance(config, dict):
        raise RotationError(f"config file {path} must hold a JSON object")
    for key in REQUIRED:
        if not config.get(key):
            raise RotationError(f"config file {path} lacks {key!r}")
    if not ROLE.match(config["role"]):
        raise RotationError(f"config file {path}: 'role' {config['role']!r} is not a plain role name")
    batch = config.get("batch", 500)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise RotationError(f"config file {path}: 'batch' must be a positive integer, not {batch!r}")
    return config


def kms_client(config):
    import boto3
    import botocore.config
    return boto3.session.Session(
        aws_access_key_id=config["access_key_id"], aws_secret_access_key=config["secret_access_key"],
        region_name=config["region"],
    ).client("kms", endpoint_url=config.get("endpoint_url") or None, config=botocore.config.Config(
        connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}))


def connect(config):
    """Over the local socket as this OS user; the maintenance role (BYPASSRLS) is set at connection start."""
    import psycopg
    # autocommit: every transaction is an explicit conn.transaction() block, never an implicit one left open.
    return psycopg.connect(dbname=config["database"], options=f"-c role={config['role']}",
                           application_name="rotate_keys", autocommit=True)


def audit(conn, action, details):
    conn.execute("insert into portal.audit_logs(action, resource_type, details) "
                 "values (%s, 'encryption_key', %s::jsonb)", (action, json.dumps(details)))


def new_key(conn, kms, kms_key_id):
    _, wrapped = envelope.new_data_key(kms, kms_key_id)  # only the wrapped key is stored; users unwrap it via KMS
    with conn.transaction():
        # Serializes concurrent new-key runs, which would otherwise both pick the same next version.
        conn.execute("lock table portal.encryption_keys in share row exclusive mode")
        version = conn.execute("select coalesce(max(version), 0) + 1 from portal.encryption_keys").fetchone()[0]
        conn.execute("update portal.encryption_keys set is_active = false, retired_at = now() where is_active")
        conn.execute("insert into portal.encryption_keys(version, kms_key_id, wrapped_key, is_active, activated_at) "
                     "values (%s, %s, %s, true, now())", (version, kms_key_id, wrapped))
        conn.execute("insert into portal.key_rotations(to_version) values (%s)", (version,))
        audit(conn, "key_created", {"version": version, "kms_key_id": kms_key_id})
    return version


def rows_left(conn, active):
    return conn.execute(f"select count(*) from portal.{TABLE} where encrypted_config is not null "
                        "and key_version is distinct from %s", (active,)).fetchone()[0]


def reencrypt_batch(conn, keyring, batch, after):
    """Re-seals up to `batch` rows with ids after `after` (None: from the first) in one transaction; their ids."""
    active, _ = keyring.active()
    with conn.transaction():
        # Holds off a new-key until this batch commits, and notices one that happened since the run started.
        now_active = (conn.execute("select version from portal.encryption_keys where is_active for share")
                      .fetchone() or [None])[0]
        if now_active != active:
            raise RotationError(f"the active key changed from {active} to {now_active} during the run: rerun reencrypt")
        keyset = " and id > %(after)s" if after is not None else ""
        rows = conn.execute(
            f"select id, encrypted_config, key_version from portal.{TABLE} where encrypted_config is not null "
            f"and key_version is distinct from %(active)s{keyset} order by id limit %(batch)s for update skip locked",
            {"active": active, "after": after, "batch": batch}).fetchall()
        for row_id, sealed, key_version in rows:
            try:
                labelled = envelope.parse(sealed)[0]
                if labelled != key_version:  # the column is what rotation selects by: they must agree
                    raise envelope.EnvelopeError(f"its envelope says key version {labelled}, its key_version "
                                                 f"column {key_version}")
                plaintext = envelope.decrypt(keyring, sealed, TABLE, str(row_id))
            except envelope.EnvelopeError as exc:
                raise RotationError(f"row {row_id} of portal.{TABLE} was not re-encrypted (batch rolled back): "
                                    f"{exc}") from None
            resealed = envelope.encrypt(keyring, plaintext, TABLE, str(row_id))
            conn.execute(f"update portal.{TABLE} set encrypted_config = %s::jsonb, key_version = %s where id = %s",
                         (json.dumps(resealed), active, row_id))
        if rows:
            conn.execute("update portal.key_rotations set rows_done = rows_done + %s, updated_at = now() "
                         "where to_version = %s", (len(rows), active))
    return [row[0] for row in rows]


def finish(conn, active):
    """Marks the rotation finished once; the audit row is written by the run that finishes it."""
    with conn.transaction():
        done = conn.execute("update portal.key_rotations set finished_at = now(), updated_at = now() "
                            "where to_version = %s and finished_at is null returning rows_done", (active,)).fetchone()
        if done:
            audit(conn, "key_rotation_finished", {"version": active, "rows_done": done[0]})


def reencrypt(conn, keyring, batch, max_batches):
    active, _ = keyring.active()  # unwrapped before the first batch: a KMS problem shows before any lock is held
    batches = 0
    while True:
        left = rows_left(conn, active)
        if left == 0:
            finish(conn, active)
            print(f"every row is on key {active}", flush=True)
            return 0
        # Each pass walks the ids once, never rescanning re-sealed rows; the next pass picks up rows that were
        # locked by the app, or written back with an old key, meanwhile.
        after = None
        while True:
            if max_batches is not None and batches >= max_batches:
                print(f"stopped after {batches} batches, {left} rows left: rerun to continue", flush=True)
                return 0
            ids = reencrypt_batch(conn, keyring, batch, after)
            if not ids:
                break
            batches, after, left = batches + 1, ids[-1], max(left - len(ids), 0)
            print(f"batch {batches}: {len(ids)} rows re-encrypted to key {active}, {left} left", flush=True)
        if after is None:
            print(f"{left} rows left, all locked by other transactions: waiting", flush=True)
            time.sleep(LOCKED_WAIT_S)


def status(conn):
    active = conn.execute("select version from portal.encryption_keys where is_active").fetchone()
    rows = conn.execute(f"select key_version, count(*) from portal.{TABLE} where encrypted_config is not null "
                        "group by key_version order by key_version").fetchall()
    return {"active_version": active[0] if active else None,
            "rows_by_key_version": {str(version): count for version, count in rows}}


def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def main(argv):
    parser = argparse.ArgumentParser(prog="mcp-rotate-keys", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=CONFIG)
    parser.set_defaults(batch=None, max_batches=None)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("new-key")
    reencrypt_args = commands.add_parser("reencrypt")
    reencrypt_args.add_argument("--batch", type=positive)
    reencrypt_args.add_argument("--max-batches", type=positive)
    commands.add_parser("status")
    args = parser.parse_args(argv[1:])
    try:
        config = load_config(args.config)
        with connect(config) as conn:
            if args.command == "status":
                print(json.dumps(status(conn), indent=2))
                return 0
            kms = kms_client(config)
            if args.command == "new-key":
                print(new_key(conn, kms, config["kms_key_id"]))
                return 0
            keyring = envelope.KeyRing.load(conn, kms)
            return reencrypt(conn, keyring, args.batch or config.get("batch", 500), args.max_batches)
    except KeyboardInterrupt:  # the open batch, if any, was rolled back
        print(f"rotate_keys {args.command}: interrupted; rerun to continue", file=sys.stderr)
        return 130
    except (RotationError, envelope.EnvelopeError) as exc:
        print(f"rotate_keys {args.command}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # database or KMS unreachable, credentials refused: one line, no traceback
        print(f"rotate_keys {args.command}: {type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
