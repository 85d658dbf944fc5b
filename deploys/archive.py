"""WAL archiving to S3 on every database host (the leader archives; whichever member Patroni promotes takes over): the
host-side archiver (hostside/wal_archive.py) as archive_command and restore_command, its resident uploader,
and a preflight at plan time that stops the run before a silently failing archive_command could be deployed.
"""

import json
import re

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FileContents
from pyinfra.facts.server import Date
from pyinfra.operations import systemd

from deploys import secrets, ship
from deploys.datasource import source_of
from deploys.facts import PostgresNode
from deploys.knobs import knobs
from deploys.patroni import database_hosts, leader, members
from deploys.postgres import cluster
from hostside import layout, wal_archive

PROGRAM = layout.program("wal-archive")
CONFIG = wal_archive.CONFIG
CREDENTIALS = layout.config("wal-archiver.json")
UNIT = "mcp-wal-archive"
GENERATION = layout.config("archive-generation")
GENERATION_SHAPE = re.compile(r"[0-9]{14}")


def archive_generation():
    """The generation a staging rebuild gave this cluster (rebuild_staging.py), or None: the newest any database host
    records, since a host rebuilt after it records none."""
    recorded = {h.name: h.get_fact(FileContents, path=GENERATION) for h in database_hosts()}
    try:
        return newest_generation({name: lines for name, lines in recorded.items() if lines is not None})
    except ValueError as exc:
        raise DeployError(f"{host.name}: {exc}") from None


def newest_generation(recorded):
    """The newest of {host: lines of its generation file}, or None; ValueError names a file that holds no generation."""
    for name, lines in recorded.items():
        if len(lines) != 1 or not GENERATION_SHAPE.fullmatch(lines[0]):
            raise ValueError(f"{name}: {GENERATION} holds {lines!r}, not one generation (YYYYMMDDHHMMSS, written by "
                             "rebuild_staging.py); rerun the rebuild, or remove the file if the cluster was never rebuilt")
    return max((lines[0] for lines in recorded.values()), default=None)


def archive_prefix(generation):
    """The cluster's prefix: wal_archive_prefix, and a rebuilt cluster's generation after it."""
    base = knobs().wal_archive_prefix
    return f"{base}-{generation}" if generation else base


def _credentials_file():
    return secrets.keys_file("wal_archive_credentials", "s3", "wal-archiver.json")


def _config():
    """The archiver's configuration for this host (the knobs' schema checked every value); DeployError names
    what is missing."""
    k, pg = knobs(), cluster()
    if not k.wal_archive_bucket:
        raise DeployError(f"{host.name}: {source_of('wal_archive_bucket')}: wal_archive_bucket is not set; name the "
                          "bucket that holds the WAL archive and base backups (docs/backups.md)")
    if not _credentials_file().is_file():
        raise DeployError(f"{host.name}: the WAL archive's S3 credentials file {_credentials_file()} is missing; "
                          "put the archive user's keys there (docs/backups.md) or set wal_archive_credentials")
    return {
        "endpoint_url": k.wal_archive_endpoint_url, "region": k.wal_archive_region,
        "bucket": k.wal_archive_bucket, "prefix": archive_prefix(archive_generation()), "sse": k.wal_archive_sse,
        "kms_key_id": k.wal_archive_kms_key_id, "compression": k.wal_archive_compression,
        "prefetch": k.wal_restore_prefetch, "credentials_file": CREDENTIALS, "socket": f"/run/{UNIT}/socket", "claim_prefix": True,
        "data_directory": pg.data_directory, "bin_directory": pg.bin_directory,
        "recovery_window_days": k.backup_retention_days, "backup_max_age_h": k.backup_max_age_h,
        "full_every_days": k.backup_full_every_days,
    }


def _preflight(config):
    """From the control machine, with the host's keys and clock: refuse what would make archiving fail."""
    pg = cluster()
    # The prefix must belong to the Patroni cluster, whose system the leader's is (whatever this host holds now: a
    # cluster Patroni did not make is the Patroni deploy's to refuse or replace). Before the cluster exists, no one.
    lead = next(h for h in database_hosts() if h.name == leader())
    owner = lead.get_fact(PostgresNode, major=pg.major, cluster=pg.name).get("system_identifier") if members() else None
    problems = wal_archive.preflight(dict(config, credentials_file=str(_credentials_file())),
                                     host.get_fact(Date).timestamp(), owner)
    if problems:
        raise DeployError(f"{host.name}: WAL archive s3://{config['bucket']}/{config['prefix']}: {problems[0]}")


@deploy("WAL archive")
def wal_archiver(programs_changed=False):
    """The archiver's configuration and keys, and its resident uploader (restarted when `programs_changed`, the
    host-side programs' install); returns the postgresql.conf settings that use them."""
    config = _config()
    if knobs().wal_archive_preflight:
        _preflight(config)
    generation = archive_generation()
    if generation:  # a rebuilt cluster's: on every member, a host rebuilt since included
        ship.file("The archive's generation (a staging rebuild's)", generation + "\n", GENERATION, "644")
    configuration = ship.file("The archiver's configuration", json.dumps(config, indent=1, sort_keys=True) + "\n",
                              CONFIG, "644")
    credentials = secrets.put_private("The archive's S3 credentials", _credentials_file().read_text(), CREDENTIALS,
                                      user="postgres", group="postgres")
    unit = ship.template("The resident uploader's unit", "templates/wal-archive.service.j2",
                         f"/etc/systemd/system/{UNIT}.service", "644", program=PROGRAM)
    if unit.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    changed = programs_changed or any(op.will_change for op in (configuration, credentials, unit))
    systemd.service(name="The resident uploader runs and starts at boot", service=f"{UNIT}.service", running=True,
                    enabled=True, restarted=changed)
    return {
        "archive_mode": "on",
        "archive_command": f"{PROGRAM} push %p %f",
        "restore_command": f"{PROGRAM} fetch %f %p",
    }
