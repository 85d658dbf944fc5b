"""The portal's envelope encryption on the database hosts: hostside/envelope.py (AES-256-GCM outside PostgreSQL,
data keys wrapped by a KMS master key) and hostside/rotate_keys.py, with their configuration and KMS keys.
The first data key is made by the deploy when the leader has none (a fact), so the portal can encrypt as soon
as the schema is there; rotation is an operator's command (docs/schema.md). docs/secrets.md for the keys."""

import json

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import server

from deploys import secrets
from deploys.datasource import source_of
from deploys.facts import ActiveDataKey
from deploys.knobs import knobs
from deploys.postgres import cluster
from hostside import layout
from hostside.rotate_keys import CONFIG

ROLE = "portal_maintenance"


def _credentials_file():
    return secrets.keys_file("portal_kms_credentials", "kms", "portal-keys.json")


def _config():
    k = knobs()
    if not k.portal_kms_key_id:
        raise DeployError(f"{host.name}: {source_of('portal_kms_key_id')}: portal_kms_key_id is not set; name the KMS "
                          "key that wraps the portal's data keys (docs/schema.md)")
    try:
        keys = json.loads(_credentials_file().read_text())
        access_key_id, secret_access_key = keys["access_key_id"], keys["secret_access_key"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DeployError(f"{host.name}: the portal's KMS credentials file {_credentials_file()} is missing or lacks "
                          "access_key_id/secret_access_key; put the key user's keys there (docs/secrets.md) or set "
                          "portal_kms_credentials") from None
    config = {"database": k.portal_database, "role": ROLE, "kms_key_id": k.portal_kms_key_id,
              "region": k.portal_kms_region, "access_key_id": access_key_id,
              "secret_access_key": secret_access_key, "batch": k.key_rotation_batch}
    if k.portal_kms_endpoint_url:
        config["endpoint_url"] = k.portal_kms_endpoint_url
    return config


@deploy("Portal encryption")
def data_keys(leading, first_key=True):
    """On every database host: the key rotation's configuration. On the leader (`leading`): a first data key if none
    (and `first_key`: a staging rebuild's copy brings its own)."""
    pg = cluster()
    secrets.put_private("The key rotation's configuration (KMS keys; postgres only)",
                        json.dumps(_config(), indent=1, sort_keys=True) + "\n", CONFIG, user="postgres", group="postgres")
    if leading and first_key and host.get_fact(ActiveDataKey, major=pg.major, cluster=pg.name,
                                 database=knobs().portal_database) is None:
        server.shell(name="Make the portal's first data key",
                     commands=[f"runuser -u postgres -- {layout.program('rotate-keys')} --config {CONFIG} new-key"])
