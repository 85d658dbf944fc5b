"""AES-256-GCM envelope encryption for the MCP Portal, outside the database: keys never enter PostgreSQL.

pgcrypto has no GCM, so the app seals and opens here and stores only the envelope, a JSONB value:

    {"v": 1, "key_version": 2, "nonce": "<base64, 12 bytes>", "ciphertext": "<base64, ciphertext || 16-byte tag>"}

The associated data binds a ciphertext to its table, row and key version: copied to another row, or relabelled
with another key_version, it fails to open instead of decrypting. Data keys are per version, stored in
portal.encryption_keys wrapped by a KMS key, unwrapped on first use and kept in memory only.
Plain Python 3 with Debian's python3-cryptography; the KMS client (boto3) and the connection (psycopg 3) are
passed in.
"""

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
KEYS = {"v", "key_version", "nonce", "ciphertext"}
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32  # AES-256
CONTEXT = {"purpose": "mcp-portal-data-key"}  # KMS encryption context: a wrapped key unwraps only with it


class EnvelopeError(Exception):
    """An envelope that cannot be sealed or opened, and why, in one line."""


def associated_data(table, row_id, key_version):
    return f"mcp-portal/v1/{table}/{row_id}/{key_version}".encode()


def _binding(table, row_id, key_version):
    # With a "/" inside a part, two different (table, row) pairs could share one associated data.
    for name, value in (("table", table), ("row_id", row_id)):
        if not isinstance(value, str) or not value or "/" in value:
            raise EnvelopeError(f"{name} must be a non-empty string without '/', not {value!r}")
    return associated_data(table, row_id, key_version)


def _aead(data_key):
    if not isinstance(data_key, bytes) or len(data_key) != KEY_BYTES:
        raise EnvelopeError(f"a data key is {KEY_BYTES} bytes (AES-256)")
    return AESGCM(data_key)


def _b64(envelope, field):
    try:
        return base64.b64decode(envelope[field], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise EnvelopeError(f"envelope {field} is not valid base64") from None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true would pass as 1


def parse(envelope):
    """(key_version, nonce, ciphertext) of a well-formed envelope, or EnvelopeError naming what is wrong."""
    if not isinstance(envelope, dict):
        raise EnvelopeError(f"an envelope is a JSON object, not {type(envelope).__name__}")
    if set(envelope) != KEYS:
        raise EnvelopeError(f"envelope keys are {sorted(envelope)}, expected {sorted(KEYS)}")
    if not _is_int(envelope["v"]) or envelope["v"] != VERSION:
        raise EnvelopeError(f"envelope v is {envelope['v']!r}, only {VERSION} is known")
    if not _is_int(envelope["key_version"]) or envelope["key_version"] < 1:
        raise EnvelopeError(f"envelope key_version is {envelope['key_version']!r}, not a positive integer")
    nonce, ciphertext = _b64(envelope, "nonce"), _b64(envelope, "ciphertext")
    if len(nonce) != NONCE_BYTES:
        raise EnvelopeError(f"envelope nonce is {len(nonce)} bytes, not {NONCE_BYTES}")
    if len(ciphertext) < TAG_BYTES:
        raise EnvelopeError(f"envelope ciphertext is {len(ciphertext)} bytes, shorter than the {TAG_BYTES}-byte tag")
    return envelope["key_version"], nonce, ciphertext


def seal(plaintext, data_key, key_version, table, row_id):
    if not _is_int(key_version) or key_version < 1:
        raise EnvelopeError(f"key_version is {key_version!r}, not a positive integer")
    # Random 96-bit nonces: safe for about 2**32 seals per key, which rotation keeps us far below.
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = _aead(data_key).encrypt(nonce, plaintext, _binding(table, row_id, key_version))
    return {"v": VERSION, "key_version": key_version, "nonce": base64.b64encode(nonce).decode(),
            "ciphertext": base64.b64encode(ciphertext).decode()}


def open_envelope(envelope, data_key, table, row_id):
    key_version, nonce, ciphertext = parse(envelope)
    try:
        return _aead(data_key).decrypt(nonce, ciphertext, _binding(table, row_id, key_version))
    except InvalidTag:
        raise EnvelopeError(f"envelope for {table}/{row_id} with key version {key_version} does not authenticate: "
                            "tampered, copied from another row, relabelled, or the wrong key") from None


def new_data_key(kms, kms_key_id):
    """(plaintext, wrapped) of a fresh AES-256 data key; only the wrapped one may be stored."""
    answer = kms.generate_data_key(KeyId=kms_key_id, KeySpec="AES_256", EncryptionContext=CONTEXT)
    return answer["Plaintext"], answer["CiphertextBlob"]


class KeyRing:
    """The data keys by version, unwrapped by KMS on first use and cached in this process's memory only."""

    def __init__(self, wrapped, active_version, kms):
        self.wrapped = {int(version): bytes(key) for version, key in wrapped.items()}
        self.active_version = active_version
        self.kms = kms
        self._keys = {}

    @classmethod
    def load(cls, conn, kms):
        """From portal.encryption_keys, through a psycopg 3 connection."""
        rows = conn.execute("select version, wrapped_key, is_active from portal.encryption_keys").fetchall()
        active = [version for version, _, is_active in rows if is_active]
        if len(active) > 1:
            raise EnvelopeError(f"portal.encryption_keys has {len(active)} active keys {sorted(active)}, at most 1")
        return cls({version: wrapped for version, wrapped, _ in rows}, active[0] if active else None, kms)

    def key(self, version):
        if version not in self._keys:
            if version not in self.wrapped:
                raise EnvelopeError(f"no data key version {version} in portal.encryption_keys")
            plaintext = self.kms.decrypt(CiphertextBlob=self.wrapped[version], EncryptionContext=CONTEXT)["Plaintext"]
            if len(plaintext) != KEY_BYTES:
                raise EnvelopeError(f"data key version {version} unwraps to {len(plaintext)} bytes, not {KEY_BYTES}")
            self._keys[version] = plaintext
        return self._keys[version]

    def active(self):
        if self.active_version is None:
            raise EnvelopeError("no active data key in portal.encryption_keys: create one (rotate_keys.py new-key)")
        return self.active_version, self.key(self.active_version)


def encrypt(keyring, plaintext, table, row_id):
    version, data_key = keyring.active()
    return seal(plaintext, data_key, version, table, row_id)


def decrypt(keyring, envelope, table, row_id):
    key_version = parse(envelope)[0]
    return open_envelope(envelope, keyring.key(key_version), table, row_id)
