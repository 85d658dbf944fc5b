"""WAL archiving to S3 on every database host (the primary archives; a promoted replica takes over): the
host-side archiver (hostside/wal_archive.py) as archive_command and restore_command, its resident uploader,
and a preflight at plan time that stops the run before a silently failing archive_command could be deployed.
"""

import io
import json
import os

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.server import Date
from pyinfra.operations import apt, files, systemd

from deploys import secrets
from deploys.datasource import source_of
from deploys.facts import PostgresNode
from deploys.postgres import DEFAULTS as POSTGRES_DEFAULTS
from hostside import wal_archive

DEFAULTS = {
    **secrets.DEFAULTS,
    "postgres_major": POSTGRES_DEFAULTS["postgres_major"],
    "postgres_cluster": POSTGRES_DEFAULTS["postgres_cluster"],
    "wal_archive_endpoint_url": "",  # empty: AWS's own endpoint for the region
    "wal_archive_region": "us-east-1",
    "wal_archive_bucket": "",
    # The cluster's place in the bucket; one cluster per prefix (the archiver refuses another cluster's).
    "wal_archive_prefix": "tier",
    "wal_archive_sse": "AES256",  # SSE-S3; or "aws:kms" with wal_archive_kms_key_id
    "wal_archive_kms_key_id": "",
    "wal_archive_compression": "gzip",
    # The archive's S3 keys (JSON: access_key_id, secret_access_key; put, get and list only); empty:
    # <secrets_dir>/s3/wal-archiver.json. Never generated: the cloud account's owner issues them.
    "wal_archive_credentials": "",
    # Off only to ship an urgent change during an S3 outage (`--data wal_archive_preflight=false`): the archive
    # then fails until S3 is back, as it would anyway.
    "wal_archive_preflight": True,
}
SSE_MODES = ("AES256", "aws:kms")
PROGRAM = "/usr/local/lib/mcp-portal/wal_archive.py"
CONFIG = wal_archive.CONFIG
CREDENTIALS = "/etc/mcp-portal/wal-archiver.json"
UNIT = "mcp-wal-archive"


def _credentials_file():
    return secrets.keys_file("wal_archive_credentials", "s3", "wal-archiver.json")


def _config():
    """The archiver's configuration for this host, validated; DeployError names the key to fix."""
    data = host.data
    if not data.wal_archive_bucket:
        raise DeployError(f"{host.name}: {source_of('wal_archive_bucket')}: wal_archive_bucket is not set; name the "
                          "bucket that holds the WAL archive and base backups (docs/backups.md)")
    if data.wal_archive_sse not in SSE_MODES:
        raise DeployError(f"{host.name}: {source_of('wal_archive_sse')}: wal_archive_sse = {data.wal_archive_sse!r}; "
                          f"use one of {', '.join(SSE_MODES)}")
    if data.wal_archive_sse == "aws:kms" and not data.wal_archive_kms_key_id:
        raise DeployError(f"{host.name}: {source_of('wal_archive_kms_key_id')}: wal_archive_sse is aws:kms but "
                          "wal_archive_kms_key_id is empty; set the KMS key id or alias")
    if data.wal_archive_compression not in wal_archive.COMPRESSIONS:
        raise DeployError(f"{host.name}: {source_of('wal_archive_compression')}: wal_archive_compression = "
                          f"{data.wal_archive_compression!r}; use one of {', '.join(wal_archive.COMPRESSIONS)}")
    if not _credentials_file().is_file():
        raise DeployError(f"{host.name}: the WAL archive's S3 credentials file {_credentials_file()} is missing; "
                          "put the archive user's keys there (docs/backups.md) or set wal_archive_credentials")
    return {
        "endpoint_url": data.wal_archive_endpoint_url, "region": data.wal_archive_region,
        "bucket": data.wal_archive_bucket, "prefix": data.wal_archive_prefix, "sse": data.wal_archive_sse,
        "kms_key_id": data.wal_archive_kms_key_id, "compression": data.wal_archive_compression,
        "credentials_file": CREDENTIALS, "socket": f"/run/{UNIT}/socket", "claim_prefix": "primary" in host.groups,
        "data_directory": f"/var/lib/postgresql/{data.postgres_major}/{data.postgres_cluster}",
    }


def _preflight(config):
    """From the control machine, with the host's keys and clock: refuse what would make archiving fail."""
    node = host.get_fact(PostgresNode, major=host.data.postgres_major, cluster=host.data.postgres_cluster)
    # The prefix's owner matters on the primary; a replica is the primary's clone, or about to become one.
    owner = node.get("system_identifier") if config["claim_prefix"] else None
    problems = wal_archive.preflight(dict(config, credentials_file=str(_credentials_file())),
                                     host.get_fact(Date).timestamp(), owner)
    if problems:
        raise DeployError(f"{host.name}: WAL archive s3://{config['bucket']}/{config['prefix']}: {problems[0]}")


@deploy("WAL archive", data_defaults=DEFAULTS)
def wal_archiver():
    """Install the archiver and its uploader; returns the postgresql.conf settings that use them."""
    config = _config()
    if host.data.wal_archive_preflight:
        _preflight(config)
    apt.packages(name="Install python3-boto3 (the archiver's S3 client)", packages=["python3-boto3"])
    program = files.put(name="The WAL archiver", src="hostside/wal_archive.py", dest=PROGRAM, mode="755",
                        create_remote_dir=True)
    # Beside the archiver, which every host-side program imports: their monitoring metrics' writer.
    metrics_writer = files.put(name="The host-side programs' metrics writer", src="hostside/textfile.py",
                               dest=f"{os.path.dirname(PROGRAM)}/textfile.py", mode="644")
    configuration = files.put(name="The archiver's configuration", dest=CONFIG, mode="644",
                              src=io.StringIO(json.dumps(config, indent=1, sort_keys=True) + "\n"))
    credentials = files.put(name="The archive's S3 credentials", src=str(_credentials_file()), dest=CREDENTIALS,
                            user="postgres", group="postgres", mode="600")
    unit = files.template(name="The resident uploader's unit", src="templates/wal-archive.service.j2",
                          dest=f"/etc/systemd/system/{UNIT}.service", mode="644", program=PROGRAM)
    if unit.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    changed = any(op.will_change for op in (program, metrics_writer, configuration, credentials, unit))
    systemd.service(name="The resident uploader runs and starts at boot", service=f"{UNIT}.service", running=True,
                    enabled=True, restarted=changed)
    return {
        "archive_mode": "on",
        "archive_command": f"{PROGRAM} push %p %f",
        "restore_command": f"{PROGRAM} fetch %f %p",
    }
