"""Envelope encryption without network or database: sealing, what must refuse to open, the key ring's caching
against a stand-in for boto3's KMS client, and rotate_keys' config errors. KMS and PostgreSQL are exercised on
the fleet."""

import base64
import json
import os

import pytest

from hostside import rotate_keys
from hostside.envelope import (CONTEXT, EnvelopeError, KeyRing, associated_data, decrypt, encrypt, new_data_key,
                               open_envelope, seal)

KEY = bytes(range(32))
TABLE, ROW = "user_server_configs", "6f1c0e7a-1b2c-4d3e-8f90-123456789abc"


class FakeKMS:
    """boto3's KMS client, as far as envelope.py uses it: wrapping is a lookup, every call is recorded."""

    def __init__(self):
        self.wrapped = {}
        self.calls = []

    def generate_data_key(self, KeyId, KeySpec, EncryptionContext):
        self.calls.append(("generate_data_key", KeyId, KeySpec, EncryptionContext))
        plaintext, blob = os.urandom(32), b"wrapped-" + os.urandom(8)
        self.wrapped[blob] = plaintext
        return {"Plaintext": plaintext, "CiphertextBlob": blob}

    def decrypt(self, CiphertextBlob, EncryptionContext):
        self.calls.append(("decrypt", CiphertextBlob, EncryptionContext))
        return {"Plaintext": self.wrapped[CiphertextBlob]}


def test_seal_and_open_round_trip():
    sealed = seal(b'{"token": "s3cret"}', KEY, 3, TABLE, ROW)
    assert set(sealed) == {"v", "key_version", "nonce", "ciphertext"}
    assert sealed["v"] == 1 and sealed["key_version"] == 3
    assert len(base64.b64decode(sealed["nonce"])) == 12
    assert len(base64.b64decode(sealed["ciphertext"])) == len(b'{"token": "s3cret"}') + 16
    assert json.loads(json.dumps(sealed)) == sealed  # a JSONB value as it is
    assert open_envelope(sealed, KEY, TABLE, ROW) == b'{"token": "s3cret"}'


def test_associated_data_names_table_row_and_key_version():
    assert associated_data(TABLE, "42", 2) == b"mcp-portal/v1/user_server_configs/42/2"


def test_nonces_differ_per_seal():
    assert len({seal(b"same", KEY, 1, TABLE, ROW)["nonce"] for _ in range(50)}) == 50


def flip_first_byte(text):
    raw = bytearray(base64.b64decode(text))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("change", [
    lambda e: {**e, "ciphertext": flip_first_byte(e["ciphertext"])},
    lambda e: {**e, "nonce": flip_first_byte(e["nonce"])},
    lambda e: {**e, "key_version": 2},
])
def test_a_tampered_or_relabelled_envelope_does_not_open(change):
    with pytest.raises(EnvelopeError, match="does not authenticate"):
        open_envelope(change(seal(b"config", KEY, 1, TABLE, ROW)), KEY, TABLE, ROW)


@pytest.mark.parametrize("table, row_id", [(TABLE, "another-row"), ("audit_logs", ROW)])
def test_an_envelope_copied_to_another_row_or_table_does_not_open(table, row_id):
    with pytest.raises(EnvelopeError, match="does not authenticate"):
        open_envelope(seal(b"config", KEY, 1, TABLE, ROW), KEY, table, row_id)


def test_the_wrong_key_does_not_open():
    with pytest.raises(EnvelopeError, match="does not authenticate"):
        open_envelope(seal(b"config", KEY, 1, TABLE, ROW), bytes(32), TABLE, ROW)


def test_a_slash_in_the_row_id_is_refused_so_associated_data_stays_unambiguous():
    with pytest.raises(EnvelopeError, match="row_id"):
        seal(b"config", KEY, 1, TABLE, "1/2")


@pytest.mark.parametrize("change, problem", [
    (lambda e: ["not", "a", "dict"], "JSON object, not list"),
    (lambda e: {**e, "algorithm": "AES-256-GCM"}, "envelope keys are"),
    (lambda e: {k: v for k, v in e.items() if k != "nonce"}, "envelope keys are"),
    (lambda e: {**e, "v": 2}, "envelope v is 2"),
    (lambda e: {**e, "v": True}, "envelope v is True"),
    (lambda e: {**e, "key_version": "1"}, "key_version is '1'"),
    (lambda e: {**e, "key_version": 0}, "key_version is 0"),
    (lambda e: {**e, "nonce": base64.b64encode(bytes(16)).decode()}, "nonce is 16 bytes, not 12"),
    (lambda e: {**e, "nonce": "not base64!"}, "nonce is not valid base64"),
    (lambda e: {**e, "ciphertext": None}, "ciphertext is not valid base64"),
    (lambda e: {**e, "ciphertext": base64.b64encode(bytes(15)).decode()}, "shorter than the 16-byte tag"),
])
def test_the_envelopes_shape_is_checked_before_decrypting(change, problem):
    with pytest.raises(EnvelopeError, match=problem):
        open_envelope(change(seal(b"config", KEY, 1, TABLE, ROW)), KEY, TABLE, ROW)


def test_a_data_key_is_32_bytes():
    with pytest.raises(EnvelopeError, match="32 bytes"):
        seal(b"config", bytes(16), 1, TABLE, ROW)


def keyring(kms, active=2):
    return KeyRing({1: new_data_key(kms, "alias/portal")[1], 2: new_data_key(kms, "alias/portal")[1]}, active, kms)


def test_new_data_key_asks_kms_for_aes_256_with_the_context():
    kms = FakeKMS()
    plaintext, wrapped = new_data_key(kms, "alias/portal")
    assert kms.calls == [("generate_data_key", "alias/portal", "AES_256", CONTEXT)]
    assert len(plaintext) == 32 and kms.wrapped[wrapped] == plaintext


def test_the_keyring_unwraps_each_version_once_and_caches_it():
    kms = FakeKMS()
    ring = keyring(kms)
    kms.calls.clear()
    sealed = [encrypt(ring, b"config %d" % i, TABLE, str(i)) for i in range(5)]
    assert [decrypt(ring, e, TABLE, str(i)) for i, e in enumerate(sealed)] == [b"config %d" % i for i in range(5)]
    assert {e["key_version"] for e in sealed} == {2}
    assert kms.calls == [("decrypt", ring.wrapped[2], CONTEXT)]


def test_decrypt_uses_the_envelopes_key_version():
    kms = FakeKMS()
    old = keyring(kms, active=1)
    sealed = encrypt(old, b"config", TABLE, ROW)
    assert decrypt(KeyRing(old.wrapped, 2, kms), sealed, TABLE, ROW) == b"config"


def test_an_unknown_key_version_or_no_active_key_is_an_envelope_error():
    kms = FakeKMS()
    with pytest.raises(EnvelopeError, match="no data key version 3"):
        decrypt(keyring(kms), seal(b"config", KEY, 3, TABLE, ROW), TABLE, ROW)
    with pytest.raises(EnvelopeError, match="no active data key"):
        encrypt(keyring(kms, active=None), b"config", TABLE, ROW)


class FakeConnection:
    def __init__(self, rows):
        self.rows = rows

    def execute(self, query):
        assert query == "select version, wrapped_key, is_active from portal.encryption_keys"
        return self

    def fetchall(self):
        return self.rows


def test_keyring_load_finds_the_active_version():
    ring = KeyRing.load(FakeConnection([(1, b"w1", False), (2, memoryview(b"w2"), True)]), FakeKMS())
    assert ring.active_version == 2 and ring.wrapped == {1: b"w1", 2: b"w2"}


def test_keyring_load_refuses_two_active_keys():
    with pytest.raises(EnvelopeError, match="2 active keys"):
        KeyRing.load(FakeConnection([(1, b"w1", True), (2, b"w2", True)]), FakeKMS())


CONFIG = {"database": "portal", "role": "portal_maintenance", "kms_key_id": "alias/portal", "region": "us-east-1",
          "access_key_id": "AKIA", "secret_access_key": "secret", "batch": 500}


def run(tmp_path, capsys, config, command="status"):
    path = tmp_path / "key-rotation.json"
    if config is not None:
        path.write_text(config if isinstance(config, str) else json.dumps(config))
    code = rotate_keys.main(["rotate_keys.py", "--config", str(path), command])
    err = capsys.readouterr().err
    return code, err, str(path)


@pytest.mark.parametrize("config, problem", [
    (None, "does not exist"),
    ("{not json", "cannot be read"),
    ({k: v for k, v in CONFIG.items() if k != "kms_key_id"}, "lacks 'kms_key_id'"),
    ({**CONFIG, "role": ""}, "lacks 'role'"),
    ({**CONFIG, "role": "x -c log_statement=all"}, "'role'"),
    ({**CONFIG, "batch": 0}, "'batch' must be a positive integer"),
])
def test_config_errors_are_one_line_naming_the_file_and_key(tmp_path, capsys, config, problem):
    code, err, path = run(tmp_path, capsys, config)
    assert code == 1 and err.count("\n") == 1 and path in err and problem in err and "Traceback" not in err


def test_the_config_is_checked_before_connecting(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(rotate_keys, "connect", lambda config: pytest.fail("connected with a bad config"))
    code, err, _ = run(tmp_path, capsys, {**CONFIG, "region": ""}, "new-key")
    assert code == 1 and "lacks 'region'" in err
