"""The tier's cluster-wide roles, made by the deploy on the primary; migrations only grant.

Passwords never leave the control machine: the deploy compares each role's password with the SCRAM-SHA-256
verifier in pg_authid (a fact), so a converged role is no operation at all (pyinfra#1418's trap), and sets a
new password by sending PostgreSQL the verifier, never the password.
"""

import base64
import hashlib
import hmac
import os
import re

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.operations import server

from deploys import pgconfig, secrets
from deploys.datasource import source_of
from deploys.facts import PostgresRoles
from deploys.postgres import DEFAULTS as POSTGRES_DEFAULTS
from deploys.sqlscript import psql

DEFAULTS = {
    **secrets.DEFAULTS,
    "postgres_major": POSTGRES_DEFAULTS["postgres_major"],
    "postgres_cluster": POSTGRES_DEFAULTS["postgres_cluster"],
    # name: attributes. login, replication, bypassrls, createdb, createrole: booleans (default false);
    # member_of: roles granted to it; settings: per-role PostgreSQL parameters.
    "postgres_roles": {
        # Owns the SECURITY DEFINER functions the policies use and the dashboard; reads past RLS, never logs in.
        "portal_definer": {"bypassrls": True},
        "portal_owner": {"member_of": ["portal_definer"]},  # owns the portal's schema; nobody logs in as it
        "portal_app": {"login": True, "settings": {"statement_timeout": "30s", "lock_timeout": "5s",
                                                     "idle_in_transaction_session_timeout": "30s"}},
        "portal_admin": {"login": True, "settings": {"statement_timeout": "5min", "lock_timeout": "10s"}},
        "portal_reporting": {"login": True, "settings": {"default_transaction_read_only": "on",
                                                           "statement_timeout": "10min"}},
        "portal_maintenance": {"login": True, "bypassrls": True, "settings": {"lock_timeout": "10s"}},
        "replicator": {"login": True, "replication": True},
        "pgbouncer_auth": {"login": True},
        "monitoring": {"login": True, "member_of": ["pg_monitor"]},
        # Writes the tier's heartbeat row through PgBouncer (deploys/heartbeat.py); nothing else.
        "heartbeat": {"login": True, "settings": {"statement_timeout": "5s", "lock_timeout": "1s"}},
    },
}
ATTRIBUTES = ("login", "replication", "bypassrls", "createdb", "createrole")
SPEC_KEYS = set(ATTRIBUTES) | {"member_of", "settings"}
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
SCRAM = re.compile(r"^SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)$")
ITERATIONS = 4096


def _b64(data):
    return base64.b64encode(data).decode()


def _keys(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    return stored, hmac.new(salted, b"Server Key", "sha256").digest()


def scram_verifier(password, salt=None, iterations=ITERATIONS):
    """What PostgreSQL stores for `password` (RFC 5802 / 7677), computed here so the password is never sent."""
    salt = salt or os.urandom(16)
    stored, server_key = _keys(password, salt, iterations)
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored)}:{_b64(server_key)}"


def verifier_matches(password, verifier):
    match = SCRAM.match(verifier or "")
    if not match:
        return False
    iterations, salt, stored, server_key = match.groups()
    keys = _keys(password, base64.b64decode(salt), int(iterations))
    return all(hmac.compare_digest(_b64(mine), theirs) for mine, theirs in zip(keys, (stored, server_key)))


def validate(roles, source):
    if not isinstance(roles, dict):
        raise pgconfig.ConfigError(f"{source}: postgres_roles must map role names to attributes")
    for name, spec in roles.items():
        where = f"{source}: postgres_roles.{name}"
        if not ROLE_NAME.match(name) or name.startswith("pg_"):
            raise pgconfig.ConfigError(f"{where}: a role name is lower-case letters, digits and _, not starting with pg_")
        if not isinstance(spec, dict) or not set(spec) <= SPEC_KEYS:
            raise pgconfig.ConfigError(f"{where}: known attributes are {', '.join(sorted(SPEC_KEYS))}")
        for attribute in ATTRIBUTES:
            if not isinstance(spec.get(attribute, False), bool):
                raise pgconfig.ConfigError(f"{where}.{attribute} must be true or false")
        pgconfig.validate(spec.get("settings", {}), source, key=f"postgres_roles.{name}.settings")


def statements(name, spec, live, password):
    """SQL that brings role `name` from `live` (None: absent) to `spec`; [] when it already matches."""
    sql = []
    attributes = " ".join(("" if spec.get(a, False) else "NO") + a.upper() for a in ATTRIBUTES)
    wants_password = spec.get("login", False)
    if live is None:
        sql.append(f'CREATE ROLE "{name}" {attributes};')
        live = {a: False for a in ATTRIBUTES} | {"member_of": [], "settings": [], "password": None}
        live.update({a: spec.get(a, False) for a in ATTRIBUTES})
    elif any(live[a] != spec.get(a, False) for a in ATTRIBUTES):
        sql.append(f'ALTER ROLE "{name}" {attributes};')
    if wants_password and not verifier_matches(password, live["password"]):
        sql.append(f"ALTER ROLE \"{name}\" PASSWORD '{scram_verifier(password)}';")
    if not wants_password and live["password"]:
        sql.append(f'ALTER ROLE "{name}" PASSWORD NULL;')
    wanted_settings = {k: str(v) for k, v in spec.get("settings", {}).items()}
    have_settings = dict(item.split("=", 1) for item in live["settings"])
    for key, value in sorted(wanted_settings.items()):
        if have_settings.get(key) != value:
            sql.append(f"ALTER ROLE \"{name}\" SET {key} = '{value.replace(chr(39), chr(39) * 2)}';")
    sql += [f'ALTER ROLE "{name}" RESET {key};' for key in sorted(set(have_settings) - set(wanted_settings))]
    wanted_members = set(spec.get("member_of", []))
    sql += [f'GRANT "{role}" TO "{name}";' for role in sorted(wanted_members - set(live["member_of"]))]
    sql += [f'REVOKE "{role}" FROM "{name}";' for role in sorted(set(live["member_of"]) - wanted_members)]
    return sql


@deploy("PostgreSQL roles", data_defaults=DEFAULTS)
def roles():
    """On the primary: every role of postgres_roles as specified; roles not listed are left alone (they may own data)."""
    major, cluster = host.data.postgres_major, host.data.postgres_cluster
    wanted = host.data.postgres_roles
    try:
        validate(wanted, source_of("postgres_roles"))
    except pgconfig.ConfigError as exc:
        raise DeployError(f"{host.name}: {exc}") from None
    live = host.get_fact(PostgresRoles, major=major, cluster=cluster)
    for name, spec in wanted.items():
        password = secrets.password(name) if spec.get("login") else None
        sql = statements(name, spec, live.get(name), password)
        if sql:
            changed = "create" if name not in live else "update"
            server.shell(
                name=f"Role {name}: {changed}",
                commands=[f"{psql()} --single-transaction <<'SQL'\n" + "\n".join(sql) + "\nSQL"],
            )
