"""The tier's heartbeat: a dedicated table and role (never portal tables, so the same checks run in prod), a row
written through PgBouncer's read-write entry every few seconds by a timer on each PgBouncer host, and read on
every replica (tests/infra, monitoring): it proves the whole write path and measures replication delay."""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import systemd

from deploys import secrets, ship, sqlscript
from deploys.datasource import address_of
from deploys.knobs import knobs
from deploys.packages import install
from hostside import layout

PASSFILE = layout.config("heartbeat.pgpass")
UNIT = "mcp-heartbeat"


@deploy("Heartbeat table")
def heartbeat_table():
    """On the primary, in the portal's database: the table, writable by the heartbeat role only."""
    k = knobs()
    sqlscript.apply("Install the heartbeat table", "templates/heartbeat.sql.j2", k.portal_database, "table",
                    "heartbeat.beat", "mcp-portal heartbeat", writer=k.heartbeat_user, readers=k.heartbeat_readers)


@deploy("Heartbeat writer")
def heartbeat_writer():
    """On a PgBouncer host: a timer that writes this host's row through the read-write entry."""
    k = knobs()
    user = k.heartbeat_user
    install("Install the PostgreSQL client", packages=[f"postgresql-client-{k.postgres_major}"])
    address = k.pgbouncer_listen_address or address_of(host)
    secrets.put_private("Heartbeat password file", f"{address}:{k.pgbouncer_port}:*:{user}:{secrets.password(user)}\n",
                        PASSFILE, user="postgres", group="postgres")
    service = ship.template(
        "Heartbeat service", "templates/heartbeat.service.j2", f"/etc/systemd/system/{UNIT}.service",
        "644", passfile=PASSFILE, address=address, port=k.pgbouncer_port,
        entry=k.pgbouncer_rw_entry, role=user, ca=f"{layout.TLS_DIR}/ca.crt", writer=host.name,
    )
    timer = ship.template("Heartbeat timer", "templates/heartbeat.timer.j2",
                          f"/etc/systemd/system/{UNIT}.timer", "644", interval_s=k.heartbeat_interval_s)
    if service.will_change or timer.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    systemd.service(name="Heartbeat timer runs and starts at boot", service=f"{UNIT}.timer", running=True, enabled=True,
                    restarted=timer.will_change)  # re-armed on the new schedule
