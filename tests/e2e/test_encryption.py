"""Envelope encryption on the fleet, as the app uses it: data keys from portal.encryption_keys unwrapped by the
fleet's KMS (moto), configs sealed outside PostgreSQL and bound to their row, and rotation on the primary with the
deployed rotate_keys.py: a new key, re-encryption in resumable batches, every row readable afterwards."""

import json
import uuid

import pytest

from fleet.layout import Layout
from fleet.s3endpoint import client
from hostside import envelope, layout
from tests.e2e.test_pgbouncer import connect
from tests.e2e.test_schema import as_postgres
from tests.fleet_helpers import on

PRIMARY = "pg-1"
TAG = "e2e-crypto"
ROWS = 10
TABLE = "user_server_configs"
ROTATE = f"runuser -u postgres -- {layout.program('rotate-keys')}"


def fleet_keys(user):
    local = Layout().local / "s3"
    tier = json.loads((local / "tier.json").read_text())
    return tier, {"endpoint": tier["endpoint_url"], "region": tier["region"],
                  **json.loads((local / f"{user}.json").read_text())}


@pytest.fixture(scope="module")
def kms():
    return client("kms", fleet_keys("portal-keys")[1])


def keyring(kms):
    with connect("portal") as app:
        return envelope.KeyRing.load(app, kms)


@pytest.fixture(scope="module")
def tenant(kms):
    """A user with ROWS configs, each sealed with the active key, as the app would store them."""
    def forget():
        as_postgres(f"delete from portal.users where azure_oid = '{TAG}'; "
                    f"delete from portal.mcp_servers where name like '{TAG}-%'")
    forget()
    with connect("portal", role="portal_admin") as admin:
        admin.execute(f"insert into portal.mcp_servers (name, display_name) select '{TAG}-' || g, 'S' || g "
                      f"from generate_series(1, {ROWS}) g")
    with connect("portal") as app:
        user = app.execute("select portal.register_user(%s, %s, %s)", (TAG, "crypto@example.test", "C")).fetchone()[0]
        ring = envelope.KeyRing.load(app, kms)
        secrets = {}
        with app.transaction():
            app.execute("select portal.set_tenant(%s)", (user,))
            for (server,) in app.execute(f"select id from portal.mcp_servers where name like '{TAG}-%'").fetchall():
                row_id, secret = str(uuid.uuid4()), f"token-{uuid.uuid4().hex}".encode()
                sealed = envelope.encrypt(ring, secret, TABLE, row_id)
                app.execute("insert into portal.user_server_configs (id, user_id, server_id, encrypted_config, key_version) "
                            "values (%s, %s, %s, %s, %s)", (row_id, user, server, json.dumps(sealed), sealed["key_version"]))
                secrets[row_id] = secret
    yield {"user": user, "secrets": secrets}
    forget()


def stored(user):
    with connect("portal") as app, app.transaction():
        app.execute("select portal.set_tenant(%s)", (user,))
        return {str(row_id): config for row_id, config in
                app.execute("select id, encrypted_config from portal.user_server_configs").fetchall()}


def test_configs_decrypt_with_keys_unwrapped_by_kms_and_no_plaintext_is_in_the_database(kms, tenant):
    ring = keyring(kms)
    rows = stored(tenant["user"])
    assert {row_id: envelope.decrypt(ring, config, TABLE, row_id) for row_id, config in rows.items()} == tenant["secrets"]
    some_secret = next(iter(tenant["secrets"].values())).decode()
    assert as_postgres(f"select count(*) from portal.user_server_configs where encrypted_config::text like '%{some_secret}%'"
                       ).stdout.strip() == "0"
    assert on(PRIMARY, f"grep -rl '{some_secret}' /var/log/postgresql/ /var/lib/postgresql/17/main/log/ 2>/dev/null",
              check=False).stdout == ""
    wrapped = as_postgres("select encode(wrapped_key, 'hex') from portal.encryption_keys").stdout.split()
    assert wrapped and all(len(key) > 64 for key in wrapped)  # KMS ciphertext blobs, not 32-byte keys


def test_a_ciphertext_copied_to_another_row_does_not_decrypt(kms, tenant):
    (first, sealed), (second, _) = list(stored(tenant["user"]).items())[:2]
    with pytest.raises(envelope.EnvelopeError):
        envelope.decrypt(keyring(kms), sealed, TABLE, second)
    assert envelope.decrypt(keyring(kms), sealed, TABLE, first) == tenant["secrets"][first]


def rotation_status():
    return json.loads(on(PRIMARY, f"{ROTATE} status").stdout)


def test_rotation_re_encrypts_every_row_in_resumable_batches_and_audits_it(kms, tenant):
    before = rotation_status()["active_version"]
    new = int(on(PRIMARY, f"{ROTATE} new-key").stdout.strip())
    assert new == before + 1 and rotation_status()["active_version"] == new
    partial = on(PRIMARY, f"{ROTATE} reencrypt --batch 3 --max-batches 1").stdout
    assert "stopped after 1 batches" in partial
    left = rotation_status()["rows_by_key_version"]
    assert left.get(str(new)) == 3 and sum(left.values()) - 3 > 0  # interrupted: some rows still on old keys
    done = on(PRIMARY, f"{ROTATE} reencrypt --batch 3", timeout=300).stdout
    assert f"every row is on key {new}" in done
    assert set(rotation_status()["rows_by_key_version"]) == {str(new)}
    ring = keyring(kms)
    rows = stored(tenant["user"])
    assert all(config["key_version"] == new for config in rows.values())
    assert {row_id: envelope.decrypt(ring, config, TABLE, row_id) for row_id, config in rows.items()} == tenant["secrets"]
    finished = as_postgres(f"select rows_done > 0, finished_at is not null from portal.key_rotations where to_version = {new}")
    assert finished.stdout.strip() == "t|t"
    audit = as_postgres(f"select action, count(*) from portal.audit_logs where action in ('key_created', 'key_rotation_finished') "
                        f"and details ->> 'version' = '{new}' group by 1 order by 1").stdout.split()
    assert audit == ["key_created|1", "key_rotation_finished|1"]
    reencrypted = as_postgres(f"select count(*) from portal.audit_logs where action = 'config_reencrypted' "
                              f"and user_id = '{tenant['user']}'").stdout.strip()
    assert int(reencrypted) == ROWS  # each row once, through the interrupted run and its rerun


def test_the_key_users_credentials_reach_no_object_in_the_archive():
    tier, keys = fleet_keys("portal-keys")
    s3 = client("s3", keys)
    with pytest.raises(Exception, match="AccessDenied|Forbidden|403"):
        s3.list_objects_v2(Bucket=tier["bucket"], MaxKeys=1)
