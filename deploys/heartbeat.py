"""The tier's heartbeat: a dedicated table and role (never portal tables, so the same checks run in prod), a row
written through PgBouncer's read-write entry every few seconds by a timer on each PgBouncer host, and read on
every replica (tests/infra, monitoring): it proves the whole write path and measures replication delay."""

import io

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import apt, files, systemd

from deploys import secrets, sqlscript
from deploys.datasource import address_of, source_of
from deploys.pgbouncer import DEFAULTS as PGBOUNCER_DEFAULTS

DEFAULTS = {
    **{key: PGBOUNCER_DEFAULTS[key] for key in ("postgres_major", "postgres_cluster", "portal_database",
                                                 "pgbouncer_port", "pgbouncer_listen_address", "pgbouncer_rw_entry",
                                                 "tls_remote_dir", "secrets_source", "secrets_dir")},
    "heartbeat_user": "heartbeat",
    "heartbeat_readers": ["monitoring"],
    # Seconds between beats: a divisor of 60 (the timer fires on those seconds of every minute).
    "heartbeat_interval_s": 10,
}
PASSFILE = "/etc/mcp-portal/heartbeat.pgpass"
UNIT = "mcp-heartbeat"


@deploy("Heartbeat table", data_defaults=DEFAULTS)
def heartbeat_table():
    """On the primary, in the portal's database: the table, writable by the heartbeat role only."""
    sqlscript.apply("Install the heartbeat table", "templates/heartbeat.sql.j2", host.data.portal_database, "table",
                    "heartbeat.beat", "mcp-portal heartbeat", writer=host.data.heartbeat_user,
                    readers=host.data.heartbeat_readers)


@deploy("Heartbeat writer", data_defaults=DEFAULTS)
def heartbeat_writer():
    """On a PgBouncer host: a timer that writes this host's row through the read-write entry."""
    interval = host.data.heartbeat_interval_s
    if not isinstance(interval, int) or interval <= 0 or 60 % interval:
        raise DeployError(f"{host.name}: {source_of('heartbeat_interval_s')}: heartbeat_interval_s = {interval!r}; "
                          "use a divisor of 60 (e.g. 5, 10, 15, 30)")
    user = host.data.heartbeat_user
    apt.packages(name="Install the PostgreSQL client", packages=[f"postgresql-client-{host.data.postgres_major}"])
    address = host.data.pgbouncer_listen_address or address_of(host)
    files.put(
        name="Heartbeat password file",
        src=io.StringIO(f"{address}:{host.data.pgbouncer_port}:*:{user}:{secrets.password(user)}\n"),
        dest=PASSFILE, user="postgres", group="postgres", mode="600",
    )
    service = files.template(
        name="Heartbeat service", src="templates/heartbeat.service.j2", dest=f"/etc/systemd/system/{UNIT}.service",
        mode="644", passfile=PASSFILE, address=address, port=host.data.pgbouncer_port,
        entry=host.data.pgbouncer_rw_entry, role=user, ca=f"{host.data.tls_remote_dir}/ca.crt", writer=host.name,
    )
    timer = files.template(name="Heartbeat timer", src="templates/heartbeat.timer.j2",
                           dest=f"/etc/systemd/system/{UNIT}.timer", mode="644", interval_s=interval)
    if service.will_change or timer.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    systemd.service(name="Heartbeat timer runs and starts at boot", service=f"{UNIT}.timer", running=True, enabled=True,
                    restarted=timer.will_change)  # re-armed on the new schedule
