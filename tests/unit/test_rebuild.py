"""The staging rebuild's decisions: which inventory it refuses, the archive generation's prefix, and the scrub's
errors (deploys/rebuild.py, deploys/archive.py, hostside/staging_scrub.py)."""

import json

import pytest

from deploys.archive import newest_generation
from deploys.rebuild import inventory_problem
from hostside import envelope, staging_scrub


def test_production_inventory_is_refused():
    assert "this is production's (group prod)" in inventory_problem({"prod", "database"}, "s3://b/prod", "s3://b/x")


def test_a_source_that_is_the_inventorys_own_archive_is_refused():
    assert "s3://b/staging is this inventory's own archive" in inventory_problem(
        {"staging", "database"}, "s3://b/staging", "s3://b/staging")


def test_staging_from_productions_archive_may_rebuild():
    assert inventory_problem({"staging", "database"}, "s3://b/prod", "s3://b/staging-20261206160202") is None
    assert inventory_problem({"staging"}, "s3://other/staging", "s3://b/staging") is None


def test_the_newest_generation_any_host_records_wins_and_none_is_none():
    assert newest_generation({}) is None
    assert newest_generation({"pg-1": ["20261206160202"], "pg-2": ["20261207090000"]}) == "20261207090000"


@pytest.mark.parametrize("lines", [[], ["2026"], ["20261206160202", "20261206160203"], ["../../etc/x"],
                                   ["20261206160202 "]])
def test_a_generation_file_that_holds_anything_else_is_refused_by_host(lines):
    with pytest.raises(ValueError, match=r"^pg-2: /etc/mcp-portal/archive-generation holds .*, not one generation"):
        newest_generation({"pg-1": ["20261206160202"], "pg-2": lines})


class RowError(Exception):
    class diag:
        message_primary = 'duplicate key value violates unique constraint "users_email_key"'

    def __str__(self):
        return self.diag.message_primary + "\nDETAIL:  Key (email)=(alice@example.com) already exists."


def test_a_database_error_is_one_line_without_the_rows_values(monkeypatch, tmp_path, capsys):
    config = tmp_path / "keys.json"
    config.write_text('{"database": "portal", "role": "r", "kms_key_id": "k", "region": "r", "access_key_id": "a", '
                      '"secret_access_key": "s"}')
    monkeypatch.setattr(staging_scrub.rotate_keys, "kms_client", lambda config: None)

    def fail(conn, kms, key):
        raise RowError()

    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    psycopg = pytest.importorskip("psycopg")
    monkeypatch.setattr(psycopg, "connect", lambda **params: Connection())
    monkeypatch.setattr(staging_scrub, "scrub", fail)
    assert staging_scrub.main(["x", "--port", "5433", "--database", "portal", "--kms-config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err == 'staging_scrub: RowError: duplicate key value violates unique constraint "users_email_key"\n'


class Recording:
    """A connection that records statements and answers the scrub's two queries."""

    def __init__(self, sealed_ids):
        self.statements, self.sealed_ids, self.updates = [], sealed_ids, []

    def transaction(self):
        return self.Block()

    class Block:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def execute(self, sql, params=None):
        self.statements.append(sql)
        rows = []
        if sql.startswith("select c.oid::regclass"):
            rows = [("portal.audit_logs_default", "client_ip"), ("portal.audit_changes_2020_01", "old_value")]
        elif sql.startswith("select id from portal.user_server_configs"):
            rows = [(i,) for i in self.sealed_ids]
        return type("Result", (), {"rowcount": 3, "fetchall": lambda self: rows})()

    def cursor(self):
        recording = self

        class Cursor(Recording.Block):
            def executemany(self, sql, rows):
                recording.updates.extend(rows)
        return Cursor()


class KMS:
    def generate_data_key(self, **request):
        return {"Plaintext": b"k" * 32, "CiphertextBlob": b"wrapped by staging's key"}


def test_the_scrub_runs_without_triggers_and_seals_synthetic_configs_with_stagings_new_key():
    conn = Recording(["c1", "c2"])
    done = staging_scrub.scrub(conn, KMS(), "staging-key")
    assert conn.statements[0] == "set local session_replication_role = replica"
    assert "update portal.audit_logs_default set client_ip = null where client_ip is distinct from null" in \
        " ".join(conn.statements)
    assert any(s.startswith("update portal.audit_changes_2020_01 set old_value = 'SCRUBBED'") for s in conn.statements)
    assert "delete from portal.encryption_keys" in conn.statements
    assert [row_id for _, row_id in conn.updates] == ["c1", "c2"]
    for sealed, row_id in conn.updates:  # each bound to its row, under the new key's plaintext
        assert envelope.open_envelope(json.loads(sealed), b"k" * 32, "user_server_configs", row_id) == b'{"synthetic": true}'
    assert done["configs replaced by synthetic ones"] == 2
