SELECT version, kms_key_id, wrapped_key, is_active, created_at, activated_at, retired_at
  FROM portal.encryption_keys WHERE false;
SELECT to_version, started_at, updated_at, finished_at, rows_done FROM portal.key_rotations WHERE false;
SELECT 1 / (portal.is_envelope('{"v": 1, "key_version": 1, "nonce": "AAAAAAAAAAAAAAAA",
                                 "ciphertext": "AAAAAAAAAAAAAAAAAAAAAAAA"}')::int);
