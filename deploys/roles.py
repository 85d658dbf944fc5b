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

from deploys import secrets, sqlscript
from deploys.facts import PostgresRoles, UngrantedFunctions
from deploys.knobs import knobs
from deploys.sqlscript import identifier, literal

ATTRIBUTES = ("login", "replication", "bypassrls", "createdb", "createrole")
# What pg_rewind reads on its source (PostgreSQL's list for a role that is not a superuser): Patroni rewinds a
# replaced leader as the replication role.
REWIND_FUNCTIONS = ("pg_catalog.pg_ls_dir(text,boolean,boolean)", "pg_catalog.pg_stat_file(text,boolean)",
                    "pg_catalog.pg_read_binary_file(text)", "pg_catalog.pg_read_binary_file(text,bigint,bigint,boolean)")
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


def statements(name, spec, live, password):
    """SQL that brings role `name` from `live` (None: absent) to `spec` (a RoleSpec); [] when it already matches.
    Names are quoted identifiers and values quoted literals; the knobs' schema has held both to their shapes."""
    sql, role = [], identifier(name)
    attributes = " ".join(("" if getattr(spec, a) else "NO") + a.upper() for a in ATTRIBUTES)
    if live is None:
        # Absent when planned; on a first deploy Patroni's bootstrap makes the replication role in the meantime.
        sql.append(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {literal(name)}) THEN "
                   f"CREATE ROLE {role}; END IF; END $$;")
        sql.append(f"ALTER ROLE {role} {attributes};")
        live = {a: getattr(spec, a) for a in ATTRIBUTES} | {"member_of": [], "settings": [], "password": None}
    elif any(live[a] != getattr(spec, a) for a in ATTRIBUTES):
        sql.append(f"ALTER ROLE {role} {attributes};")
    if spec.login and not verifier_matches(password, live["password"]):
        sql.append(f"ALTER ROLE {role} PASSWORD {literal(scram_verifier(password))};")
    if not spec.login and live["password"]:
        sql.append(f"ALTER ROLE {role} PASSWORD NULL;")
    wanted_settings = {k: str(v) for k, v in spec.settings.items()}
    have_settings = dict(item.split("=", 1) for item in live["settings"])
    for key, value in sorted(wanted_settings.items()):
        if have_settings.get(key) != value:
            sql.append(f"ALTER ROLE {role} SET {identifier(key)} = {literal(value)};")
    sql += [f"ALTER ROLE {role} RESET {identifier(key)};" for key in sorted(set(have_settings) - set(wanted_settings))]
    wanted_members = set(spec.member_of)
    sql += [f"GRANT {identifier(group)} TO {role};" for group in sorted(wanted_members - set(live["member_of"]))]
    sql += [f"REVOKE {identifier(group)} FROM {role};" for group in sorted(set(live["member_of"]) - wanted_members)]
    return sql


@deploy("PostgreSQL roles")
def roles():
    """On the leader: every role of postgres_roles as specified; roles not listed are left alone (they may own data).
    The SQL, verifiers included, reaches psql on its stdin: never a command line. The replication role may read
    what pg_rewind compares."""
    k = knobs()
    live = host.get_fact(PostgresRoles, major=k.postgres_major, cluster=k.postgres_cluster)
    for name, spec in k.postgres_roles.items():
        password = secrets.password(name) if spec.login else None
        sql = statements(name, spec, live.get(name), password)
        if sql:
            sqlscript.run(f"Role {name}: {'create' if name not in live else 'update'}", "\n".join(sql))
    user = k.postgres_replication_user
    ungranted = host.get_fact(UngrantedFunctions, major=k.postgres_major, cluster=k.postgres_cluster, role=user,
                              functions=REWIND_FUNCTIONS)
    if ungranted is None:  # a cluster not running at plan time (a first deploy): grant, the role exists by then
        ungranted = list(REWIND_FUNCTIONS)
    if ungranted:
        sqlscript.run(f"Let {user} read what pg_rewind compares ({len(ungranted)} functions)",
                      f"grant execute on function {', '.join(ungranted)} to {identifier(user)};")
