"""PgBouncer in front of the tier: transaction pooling, a read-write entry on the primary and a read-only entry
over the replicas, TLS on both sides, passwords looked up with auth_query (no file of hashes anywhere)."""

import hashlib
import io
from pathlib import Path

from jinja2 import Template

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.facts.files import FindInFile
from pyinfra.operations import apt, files, server, systemd

from deploys import secrets
from deploys.datasource import address_of
from deploys.facts import FunctionComment, PostgresDatabases
from deploys.postgres import DEFAULTS as POSTGRES_DEFAULTS
from deploys.replication import the_primary
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
    "pgbouncer_port": 6432,
    "pgbouncer_listen_address": "",  # empty: the host's inventory address
    "pgbouncer_rw_entry": "portal",
    "pgbouncer_ro_entry": "portal_ro",
    "pgbouncer_auth_user": "pgbouncer_auth",
    "pgbouncer_auth_database": "auth_lookup",  # "pgbouncer" is reserved for its admin console
    "pgbouncer_admin_users": ["portal_admin"],
    "pgbouncer_stats_users": ["monitoring"],
    # The assessment's section 8.
    "pgbouncer_pool": {"pool_mode": "transaction", "max_client_conn": 1000, "default_pool_size": 25,
                       "min_pool_size": 10, "reserve_pool_size": 5, "server_idle_timeout": 600},
}
AUTH_FUNCTION = "pgbouncer.get_auth(text)"


def _auth_sql():
    """The lookup function's SQL and its marker: the comment carries a hash of the SQL, so a changed
    definition is re-applied and an unchanged one is not (read back as a fact)."""
    source = Path("templates/pgbouncer-auth.sql.j2").read_text()
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    marker = f"mcp-portal pgbouncer auth lookup {digest}"
    return Template(source).render(auth_user=host.data.pgbouncer_auth_user, marker=marker), marker


@deploy("PgBouncer's databases on the primary", data_defaults=DEFAULTS)
def databases():
    """The portal's database and the auth lookup's own database, before any migration needs them."""
    major, cluster = host.data.postgres_major, host.data.postgres_cluster
    psql = f"runuser -u postgres -- psql --cluster {major}/{cluster} -XqAt -v ON_ERROR_STOP=1"
    existing = host.get_fact(PostgresDatabases, major=major, cluster=cluster)
    portal, owner = host.data.portal_database, host.data.portal_database_owner
    auth_db, auth_user = host.data.pgbouncer_auth_database, host.data.pgbouncer_auth_user
    if portal not in existing:
        server.shell(name=f"Create database {portal}", commands=[f"{psql} -c 'create database {portal} owner {owner}'"])
    if auth_db not in existing:
        server.shell(name=f"Create database {auth_db} (PgBouncer's auth lookup)", commands=[
            f"{psql} -c 'create database {auth_db}' -c 'revoke all on database {auth_db} from public' "
            f"-c 'grant connect on database {auth_db} to {auth_user}'"])
    sql, marker = _auth_sql()
    if host.get_fact(FunctionComment, major=major, cluster=cluster, database=auth_db, signature=AUTH_FUNCTION) != marker:
        server.shell(name="Install PgBouncer's auth lookup function",
                     commands=[f"{psql} -d {auth_db} <<'SQL'\n{sql}\nSQL"])


@deploy("PgBouncer", data_defaults=DEFAULTS)
def pooler():
    primary = the_primary()
    replicas = inventory.get_group("replicas", []) or [primary]
    auth_user = host.data.pgbouncer_auth_user
    apt.packages(name="Install PgBouncer", packages=["pgbouncer"], update=True, cache_time=3600)
    tls = certificates(owner="postgres")  # the package's service runs as postgres
    userlist = files.put(
        name="PgBouncer's own login (the auth_query user only; every other password is looked up)",
        src=io.StringIO(f'"{auth_user}" "{secrets.password(auth_user)}"\n'),
        dest="/etc/pgbouncer/userlist.txt", user="postgres", group="postgres", mode="600",
    )
    listen_addr = host.data.pgbouncer_listen_address or address_of(host)
    listening = host.get_fact(FindInFile, path="/etc/pgbouncer/pgbouncer.ini", pattern=r"^listen_[a-z]* = ") or []
    restart = sorted(listening) != [f"listen_addr = {listen_addr}", f"listen_port = {host.data.pgbouncer_port}"]
    ini = files.template(
        name="Render pgbouncer.ini",
        src="templates/pgbouncer.ini.j2", dest="/etc/pgbouncer/pgbouncer.ini", user="postgres", group="postgres", mode="640",
        rw_name=host.data.pgbouncer_rw_entry, ro_name=host.data.pgbouncer_ro_entry, database=host.data.portal_database,
        primary=address_of(primary), replicas=[address_of(r) for r in replicas], port=host.data.postgres_port,
        auth_database=host.data.pgbouncer_auth_database, auth_user=auth_user,
        listen_addr=listen_addr, listen_port=host.data.pgbouncer_port,
        admin_users=host.data.pgbouncer_admin_users, stats_users=host.data.pgbouncer_stats_users,
        pool=host.data.pgbouncer_pool, tls=host.data.tls_remote_dir,
    )
    systemd.service(name="PgBouncer runs and starts at boot", service="pgbouncer", running=True, enabled=True)
    if restart:  # a new listen address or port takes a restart: clients are disconnected
        systemd.service(name="Restart PgBouncer (listen_addr or listen_port changed)", service="pgbouncer", restarted=True)
    elif any(op.will_change for op in (ini, userlist, *tls.values())):
        systemd.service(name="Reload PgBouncer (clients stay connected)", service="pgbouncer", reloaded=True)
