"""PgBouncer in front of the tier: transaction pooling, a read-write entry on the leader (which follows it: see
deploys/routing.py) and a read-only entry over the replicas, TLS on both sides, passwords looked up with auth_query
(no file of hashes anywhere)."""

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FindInFile
from pyinfra.operations import systemd

from deploys import secrets, ship, sqlscript
from deploys.datasource import address_of, source_of
from deploys.facts import PostgresDatabases
from deploys.knobs import knobs
from deploys.packages import install
from deploys.postgres import cluster
from deploys.routing import endpoints, leader_follower
from deploys.sqlscript import identifier
from deploys.tls import certificates
from hostside import layout

AUTH_FUNCTION = "pgbouncer.get_auth(text)"
# The auth lookup's own pool: one query per new client login, never held.
AUTH_LOOKUP_CONNECTIONS = 2


def pooled_connections():
    """{PgBouncer host: the most server connections it opens to one database host}, for the connection budget.

    Counted for every database host, since any of them may lead: both entries' caps (with no replica within its lag,
    the read-only entry reaches the leader too) and the auth lookup's pool.
    """
    return {pooler.name: 2 * knobs(pooler).pgbouncer_pool.max_db_connections + AUTH_LOOKUP_CONNECTIONS
            for pooler in inventory.get_group("pgbouncer", [])}


@deploy("PgBouncer's databases on the primary")
def databases():
    """The portal's database, open only to the tier's roles, and the auth lookup's own database, before any
    migration needs them."""
    k, pg = knobs(), cluster()
    existing = host.get_fact(PostgresDatabases, major=pg.major, cluster=pg.name)
    portal, owner = k.portal_database, k.portal_database_owner
    auth_db, auth_user = k.pgbouncer_auth_database, k.pgbouncer_auth_user
    users = k.portal_database_users
    unknown = sorted(set(users) - set(k.postgres_roles))
    if unknown:
        raise DeployError(f"{host.name}: {source_of('portal_database_users')}: portal_database_users names "
                          f"{', '.join(unknown)}, not in postgres_roles; add the role there or remove it here")
    if portal not in existing:
        sqlscript.run(f"Create database {portal}", f"create database {identifier(portal)} owner {identifier(owner)};",
                      transaction=False)
    connect = existing.get(portal, {}).get("connect", [])
    if sorted(connect) != sorted({owner, *users}):
        revoke = ["public", *(identifier(role) for role in connect if role not in {"PUBLIC", owner, *users})]
        sqlscript.run(f"Only the tier's roles may connect to {portal} ({', '.join(users)})",
                      f"revoke connect, temporary on database {identifier(portal)} from {', '.join(revoke)};\n"
                      f"grant connect, temporary on database {identifier(portal)} to "
                      f"{', '.join(identifier(u) for u in users)};")
    if auth_db not in existing:
        # CREATE DATABASE cannot run inside a transaction block: one statement per script.
        sqlscript.run(f"Create database {auth_db} (PgBouncer's auth lookup)", f"create database {identifier(auth_db)};",
                      transaction=False)
        sqlscript.run(f"Database {auth_db}: connect for {auth_user} only",
                      f"revoke all on database {identifier(auth_db)} from public;\n"
                      f"grant connect on database {identifier(auth_db)} to {identifier(auth_user)};")
    sqlscript.apply("Install PgBouncer's auth lookup function", "templates/pgbouncer-auth.sql.j2", auth_db,
                    "function", AUTH_FUNCTION, "mcp-portal pgbouncer auth lookup", auth_user=auth_user)


@deploy("PgBouncer")
def pooler(programs_changed):
    k = knobs()
    auth_user, pool = k.pgbouncer_auth_user, k.pgbouncer_pool
    read_only = endpoints()[1]
    limits = ship.template(
        "Let PgBouncer open a descriptor per client and server connection",
        "templates/pgbouncer-unit-override.conf.j2", "/etc/systemd/system/pgbouncer.service.d/mcp-portal.conf", "644",
        create_remote_dir=True, max_client_conn=pool.max_client_conn, nofile=2 * pool.max_client_conn + 1024,
    )
    if limits.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    install("Install PgBouncer", packages=["pgbouncer"])
    tls = certificates(owner="postgres")  # the package's service runs as postgres
    leader_follower([
        {"name": k.pgbouncer_rw_entry, "dbname": k.portal_database, "options": ""},
        {"name": k.pgbouncer_auth_database, "dbname": k.pgbouncer_auth_database,
         "options": f"pool_size={AUTH_LOOKUP_CONNECTIONS} min_pool_size=0 reserve_pool_size=0 "
                    f"max_db_connections={AUTH_LOOKUP_CONNECTIONS}"},
    ], programs_changed)
    userlist = secrets.put_private("PgBouncer's own login (the auth_query user only; every other password is looked up)",
                                   f'"{auth_user}" "{secrets.password(auth_user)}"\n', "/etc/pgbouncer/userlist.txt",
                                   user="postgres", group="postgres")
    listen_addr = k.pgbouncer_listen_address or address_of(host)
    listening = host.get_fact(FindInFile, path="/etc/pgbouncer/pgbouncer.ini", pattern=r"^listen_[a-z]* = ") or []
    moved = sorted(listening) != [f"listen_addr = {listen_addr}", f"listen_port = {k.pgbouncer_port}"]
    ini = ship.template(
        "Render pgbouncer.ini",
        "templates/pgbouncer.ini.j2", "/etc/pgbouncer/pgbouncer.ini", "640", user="postgres", group="postgres",
        rw_name=k.pgbouncer_rw_entry, ro_name=k.pgbouncer_ro_entry, database=k.portal_database,
        read_only=read_only, leader_entries=layout.LEADER_ENTRIES, auth_database=k.pgbouncer_auth_database,
        auth_user=auth_user, listen_addr=listen_addr, listen_port=k.pgbouncer_port,
        stats_users=k.pgbouncer_stats_users, pool=pool.model_dump(), tls=layout.TLS_DIR, pidfile=layout.PGBOUNCER_PIDFILE,
    )
    systemd.service(name="PgBouncer runs and starts at boot", service="pgbouncer", running=True, enabled=True)
    if moved or limits.will_change:  # clients are disconnected: say why in the plan
        why = "listen_addr or listen_port changed" if moved else "its descriptor limit changed"
        systemd.service(name=f"Restart PgBouncer ({why})", service="pgbouncer", restarted=True)
    elif any(op.will_change for op in (ini, userlist, *tls.values())):
        systemd.service(name="Reload PgBouncer (clients stay connected)", service="pgbouncer", reloaded=True)
