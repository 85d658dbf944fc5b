"""PgBouncer in front of the tier: transaction pooling, a read-write entry on the primary and a read-only entry
over the replicas, TLS on both sides, passwords looked up with auth_query (no file of hashes anywhere)."""

import io

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import FindInFile
from pyinfra.operations import apt, files, server, systemd

from deploys import secrets, sqlscript
from deploys.datasource import address_of, source_of
from deploys.facts import PostgresDatabases
from deploys.postgres import DEFAULTS as POSTGRES_DEFAULTS
from deploys.replication import the_primary
from deploys.roles import DEFAULTS as ROLES_DEFAULTS
from deploys.sqlscript import psql
from deploys.tls import DEFAULTS as TLS_DEFAULTS
from deploys.tls import certificates

DEFAULTS = {
    **secrets.DEFAULTS,
    "postgres_major": POSTGRES_DEFAULTS["postgres_major"],
    "postgres_cluster": POSTGRES_DEFAULTS["postgres_cluster"],
    "postgres_port": POSTGRES_DEFAULTS["postgres_port"],
    "tls_remote_dir": TLS_DEFAULTS["tls_remote_dir"],
    "portal_database": "portal",
    "portal_database_owner": "portal_owner",
    # Roles that may connect to the portal's database (CONNECT is revoked from PUBLIC); each is in postgres_roles.
    "portal_database_users": ["portal_app", "portal_admin", "portal_reporting", "portal_maintenance", "monitoring",
                              "heartbeat"],
    "postgres_roles": ROLES_DEFAULTS["postgres_roles"],
    "pgbouncer_port": 6432,
    "pgbouncer_listen_address": "",  # empty: the host's inventory address
    "pgbouncer_rw_entry": "portal",
    "pgbouncer_ro_entry": "portal_ro",
    "pgbouncer_auth_user": "pgbouncer_auth",
    "pgbouncer_auth_database": "auth_lookup",  # "pgbouncer" is reserved for its admin console
    "pgbouncer_admin_users": ["portal_admin"],
    "pgbouncer_stats_users": ["monitoring"],
    # The assessment's section 8, and max_db_connections: a cap on each entry's server connections over all
    # of its users' pools, so the database hosts' connection budget has a number to count.
    "pgbouncer_pool": {"pool_mode": "transaction", "max_client_conn": 1000, "default_pool_size": 25,
                       "min_pool_size": 10, "reserve_pool_size": 5, "server_idle_timeout": 600,
                       "max_db_connections": 30},
}
AUTH_FUNCTION = "pgbouncer.get_auth(text)"
# The auth lookup's own pool: one query per new client login, never held.
AUTH_LOOKUP_CONNECTIONS = 2


def pool_settings(pooler):
    """A PgBouncer host's pool settings: group_data's pgbouncer_pool keys over the defaults, key by key."""
    return {**DEFAULTS["pgbouncer_pool"], **(pooler.data.get("pgbouncer_pool") or {})}


def pooled_connections():
    """{PgBouncer host: the most server connections it opens to one database host}, for the connection budget.

    Counted for every database host, since any of them may become the primary: the read-write entry's cap and
    the auth lookup's pool, plus the read-only entry's cap when there is no replica to send it to.
    """
    caps = {}
    for pooler in inventory.get_group("pgbouncer", []):
        cap = pool_settings(pooler)["max_db_connections"]
        if not isinstance(cap, int) or cap <= 0:
            raise DeployError(f"{pooler.name}: {source_of('pgbouncer_pool', pooler)}: pgbouncer_pool.max_db_connections "
                              f"= {cap!r}; set a whole number > 0 (the database hosts' connection budget counts it)")
        entries = 1 if inventory.get_group("replicas", []) else 2
        caps[pooler.name] = entries * cap + AUTH_LOOKUP_CONNECTIONS
    return caps


@deploy("PgBouncer's databases on the primary", data_defaults=DEFAULTS)
def databases():
    """The portal's database, open only to the tier's roles, and the auth lookup's own database, before any
    migration needs them."""
    existing = host.get_fact(PostgresDatabases, major=host.data.postgres_major, cluster=host.data.postgres_cluster)
    portal, owner = host.data.portal_database, host.data.portal_database_owner
    auth_db, auth_user = host.data.pgbouncer_auth_database, host.data.pgbouncer_auth_user
    users = host.data.portal_database_users
    unknown = sorted(set(users) - set(host.data.postgres_roles))
    if unknown:
        raise DeployError(f"{host.name}: {source_of('portal_database_users')}: portal_database_users names "
                          f"{', '.join(unknown)}, not in postgres_roles; add the role there or remove it here")
    if portal not in existing:
        server.shell(name=f"Create database {portal}", commands=[f"{psql()} -c 'create database {portal} owner {owner}'"])
    connect = existing.get(portal, {}).get("connect", [])
    if sorted(connect) != sorted({owner, *users}):
        revoke = ["public", *(role for role in connect if role not in {"PUBLIC", owner, *users})]
        server.shell(name=f"Only the tier's roles may connect to {portal} ({', '.join(users)})", commands=[
            f"{psql()} --single-transaction -c 'revoke connect, temporary on database {portal} from {', '.join(revoke)}' "
            f"-c 'grant connect, temporary on database {portal} to {', '.join(users)}'"])
    if auth_db not in existing:
        server.shell(name=f"Create database {auth_db} (PgBouncer's auth lookup)", commands=[
            f"{psql()} -c 'create database {auth_db}' -c 'revoke all on database {auth_db} from public' "
            f"-c 'grant connect on database {auth_db} to {auth_user}'"])
    sqlscript.apply("Install PgBouncer's auth lookup function", "templates/pgbouncer-auth.sql.j2", auth_db,
                    "function", AUTH_FUNCTION, "mcp-portal pgbouncer auth lookup", auth_user=auth_user)


@deploy("PgBouncer", data_defaults=DEFAULTS)
def pooler():
    primary = the_primary()
    replicas = inventory.get_group("replicas", []) or [primary]
    auth_user = host.data.pgbouncer_auth_user
    pool = pool_settings(host)
    max_client_conn = pool["max_client_conn"]
    limits = files.template(
        name="Let PgBouncer open a descriptor per client and server connection",
        src="templates/pgbouncer-unit-override.conf.j2", dest="/etc/systemd/system/pgbouncer.service.d/mcp-portal.conf",
        create_remote_dir=True, mode="644", max_client_conn=max_client_conn, nofile=2 * max_client_conn + 1024,
    )
    if limits.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    apt.packages(name="Install PgBouncer", packages=["pgbouncer"], update=True, cache_time=3600)
    tls = certificates(owner="postgres")  # the package's service runs as postgres
    userlist = files.put(
        name="PgBouncer's own login (the auth_query user only; every other password is looked up)",
        src=io.StringIO(f'"{auth_user}" "{secrets.password(auth_user)}"\n'),
        dest="/etc/pgbouncer/userlist.txt", user="postgres", group="postgres", mode="600",
    )
    listen_addr = host.data.pgbouncer_listen_address or address_of(host)
    listening = host.get_fact(FindInFile, path="/etc/pgbouncer/pgbouncer.ini", pattern=r"^listen_[a-z]* = ") or []
    moved = sorted(listening) != [f"listen_addr = {listen_addr}", f"listen_port = {host.data.pgbouncer_port}"]
    ini = files.template(
        name="Render pgbouncer.ini",
        src="templates/pgbouncer.ini.j2", dest="/etc/pgbouncer/pgbouncer.ini", user="postgres", group="postgres", mode="640",
        rw_name=host.data.pgbouncer_rw_entry, ro_name=host.data.pgbouncer_ro_entry, database=host.data.portal_database,
        primary=address_of(primary), replicas=[address_of(r) for r in replicas], port=host.data.postgres_port,
        auth_database=host.data.pgbouncer_auth_database, auth_user=auth_user,
        listen_addr=listen_addr, listen_port=host.data.pgbouncer_port,
        admin_users=host.data.pgbouncer_admin_users, stats_users=host.data.pgbouncer_stats_users,
        pool=pool, tls=host.data.tls_remote_dir, auth_connections=AUTH_LOOKUP_CONNECTIONS,
    )
    systemd.service(name="PgBouncer runs and starts at boot", service="pgbouncer", running=True, enabled=True)
    if moved or limits.will_change:  # clients are disconnected: say why in the plan
        why = "listen_addr or listen_port changed" if moved else "its descriptor limit changed"
        systemd.service(name=f"Restart PgBouncer ({why})", service="pgbouncer", restarted=True)
    elif any(op.will_change for op in (ini, userlist, *tls.values())):
        systemd.service(name="Reload PgBouncer (clients stay connected)", service="pgbouncer", reloaded=True)
