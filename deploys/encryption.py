"""The portal's envelope encryption on the database hosts: hostside/envelope.py (AES-256-GCM outside PostgreSQL,
data keys wrapped by a KMS master key) and hostside/rotate_keys.py, with their configuration and KMS keys.
The first data key is made by the deploy when the primary has none (a fact), so the portal can encrypt as soon
as the schema is there; rotation is an operator's command (docs/schema.md). docs/secrets.md for the keys."""

import io
import json

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, files, server

from deploys import secrets
from deploys.datasource import source_of
from deploys.facts import ActiveDataKey
from deploys.schema import DEFAULTS as SCHEMA_DEFAULTS

DEFAULTS = {
    **secrets.DEFAULTS,
    **{key: SCHEMA_DEFAULTS[key] for key in ("postgres_major", "postgres_cluster", "portal_database")},
    # The KMS master key that wraps the portal's data keys (id, ARN or alias), and where KMS answers.
    "portal_kms_key_id": "",
    "portal_kms_region": "us-east-1",
    "portal_kms_endpoint_url": "",  # empty: AWS's own endpoint for the region
    # JSON {"access_key_id", "secret_access_key"} allowed kms:GenerateDataKey and kms:Decrypt on that key;
    # empty: <secrets_dir>/kms/portal-keys.json. Never generated: the cloud account's owner issues them.
    "portal_kms_credentials": "",
    "key_rotation_batch": 500,
}
PROGRAM_DIR = "/usr/local/lib/mcp-portal"
CONFIG = "/etc/mcp-portal/key-rotation.json"
ROLE = "portal_maintenance"


def _credentials_file():
    return secrets.keys_file("portal_kms_credentials", "kms", "portal-keys.json")


def _config():
    data = host.data
    if not data.portal_kms_key_id:
        raise DeployError(f"{host.name}: {source_of('portal_kms_key_id')}: portal_kms_key_id is not set; name the KMS "
                          "key that wraps the portal's data keys (docs/schema.md)")
    batch = data.key_rotation_batch
    if not isinstance(batch, int) or isinstance(batch, bool) or not 1 <= batch <= 100_000:
        raise DeployError(f"{host.name}: {source_of('key_rotation_batch')}: key_rotation_batch = {batch!r}; "
                          "use rows per transaction between 1 and 100000")
    try:
        keys = json.loads(_credentials_file().read_text())
        access_key_id, secret_access_key = keys["access_key_id"], keys["secret_access_key"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DeployError(f"{host.name}: the portal's KMS credentials file {_credentials_file()} is missing or lacks "
                          "access_key_id/secret_access_key; put the key user's keys there (docs/secrets.md) or set "
                          "portal_kms_credentials") from None
    config = {"database": data.portal_database, "role": ROLE, "kms_key_id": data.portal_kms_key_id,
              "region": data.portal_kms_region, "access_key_id": access_key_id,
              "secret_access_key": secret_access_key, "batch": batch}
    if data.portal_kms_endpoint_url:
        config["endpoint_url"] = data.portal_kms_endpoint_url
    return config


@deploy("Portal encryption", data_defaults=DEFAULTS)
def data_keys():
    """On every database host: the programs and their configuration. On the primary: a first data key if none."""
    config = _config()
    apt.packages(name="Install the encryption programs' libraries",
                 packages=["python3-cryptography", "python3-boto3", "python3-psycopg"])
    for program in ("envelope.py", "rotate_keys.py"):
        files.put(name=f"The key rotation's {program}", src=f"hostside/{program}", dest=f"{PROGRAM_DIR}/{program}",
                  mode="755", create_remote_dir=True)
    files.put(name="The key rotation's configuration (KMS keys; postgres only)", dest=CONFIG, user="postgres",
              group="postgres", mode="600", src=io.StringIO(json.dumps(config, indent=1, sort_keys=True) + "\n"))
    if "primary" in host.groups and host.get_fact(ActiveDataKey, major=host.data.postgres_major,
                                                   cluster=host.data.postgres_cluster,
                                                   database=host.data.portal_database) is None:
        server.shell(name="Make the portal's first data key",
                     commands=[f"runuser -u postgres -- {PROGRAM_DIR}/rotate_keys.py --config {CONFIG} new-key"])
