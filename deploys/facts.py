"""Custom pyinfra facts: the state the deploys decide from at plan time, so `--dry` tells the truth."""

import json
from shlex import quote

from pyinfra.api import FactBase

from hostside import layout
from hostside.wal_archive import CURRENT_TIMELINE_SQL


def psql_query(major, cluster, sql, database=None, **variables):
    """Shell: `sql` (fixed text) on psql's stdin, as postgres on the cluster, with `variables` as psql variables
    (the SQL reads them as :'name' or :"name", so psql quotes them); unaligned, tuples only."""
    target = f" -d {quote(database)}" if database else ""
    settings = "".join(f" -v {name}={quote(str(value))}" for name, value in variables.items())
    return (f"printf '%s\\n' {quote(sql)} | runuser -u postgres -- psql -XtA --cluster {major}/{cluster}{target} "
            f"-v ON_ERROR_STOP=1{settings}")


class AptHolds(FactBase):
    """Packages held with `apt-mark hold`."""

    command = "apt-mark showhold"
    default = list

    def process(self, output):
        return sorted(line.strip() for line in output if line.strip())


class AptVersions(FactBase):
    """{package: {"installed", "candidate"}} from the host's current package index ("(none)" when not installed)."""

    default = dict

    def command(self, packages):
        return "apt-cache policy " + " ".join(quote(p) for p in packages)

    def process(self, output):
        versions, package = {}, None
        for line in output:
            if line and not line.startswith(" ") and line.endswith(":"):
                package = versions.setdefault(line[:-1], {})
            elif package is not None and line.strip().startswith(("Installed:", "Candidate:")):
                key, value = line.strip().split(":", 1)
                package[key.lower()] = value.strip()
        return versions


class PostgresClusters(FactBase):
    """Debian's PostgreSQL clusters: {"17/main": {"status", "datadir", "checksums", "databases", "system_identifier"}}.

    `databases` counts the directories under base/ (template0, template1 and postgres make 3), so it is
    known without the cluster running; `checksums` and `system_identifier` come from pg_controldata.
    """

    requires_command = "pg_lsclusters"
    default = dict
    command = r"""pg_lsclusters --no-header | while read -r version name port status owner datadir rest; do
  control=$(LC_ALL=C /usr/lib/postgresql/$version/bin/pg_controldata "$datadir")
  checksums=$(echo "$control" | sed -n 's/^Data page checksum version: *//p')
  system=$(echo "$control" | sed -n 's/^Database system identifier: *//p')
  printf '%s %s %s %s %s %s %s\n' "$version" "$name" "$status" "$datadir" "${checksums:-0}" "$(ls "$datadir/base" | wc -l)" "${system:-none}"
done"""

    def process(self, output):
        clusters = {}
        for line in output:
            version, name, status, datadir, checksums, databases, system = line.split()
            clusters[f"{version}/{name}"] = {
                "status": status, "datadir": datadir, "checksums": checksums != "0", "databases": int(databases),
                "system_identifier": system,
            }
        return clusters


STARTING_WAIT_S = 120  # pg_isready exits 1 while the server rejects connections as it starts


class PostgresJsonQuery(FactBase):
    """The JSON a query on the running cluster returns (as postgres, over the local socket); {} when it is down.
    A cluster still starting (a standby short of a consistent state, after a boot) rejects connections: waited for,
    up to STARTING_WAIT_S."""

    default = dict
    query = None

    def command(self, major, cluster):
        return (f"if pg_lsclusters --no-header {major} {cluster} 2>/dev/null | grep -q online; then "
                f"for _ in $(seq {STARTING_WAIT_S}); do "
                f"runuser -u postgres -- pg_isready -q --cluster {major}/{cluster}; [ $? = 1 ] || break; sleep 1; "
                f"done; {psql_query(major, cluster, self.query)}; fi")

    def process(self, output):
        text = "".join(output).strip()
        return json.loads(text) if text else {}


class PostgresSettings(PostgresJsonQuery):
    """The running cluster's pg_settings: {name: {"setting", "boot_val", "context", "source", "pending_restart"}}."""

    query = ("select json_object_agg(name, json_build_object('setting', setting, 'boot_val', boot_val, "
             "'context', context, 'source', source, 'pending_restart', pending_restart)) from pg_settings")


class PostgresRoles(PostgresJsonQuery):
    """Login and group roles (not pg_*, not postgres): {name: {login, replication, bypassrls, createdb,
    createrole, password (the stored verifier), member_of, settings}}."""

    query = ("select json_object_agg(r.rolname, json_build_object('login', r.rolcanlogin, "
             "'replication', r.rolreplication, 'bypassrls', r.rolbypassrls, 'createdb', r.rolcreatedb, "
             "'createrole', r.rolcreaterole, 'password', r.rolpassword, "
             "'member_of', array(select g.rolname from pg_auth_members m join pg_roles g on g.oid = m.roleid "
             "where m.member = r.oid order by 1), "
             "'settings', coalesce((select s.setconfig from pg_db_role_setting s where s.setrole = r.oid "
             "and s.setdatabase = 0), '{}'))) from pg_authid r where r.rolname !~ '^pg_' and r.rolname <> 'postgres'")


# True when a cluster holds anything initdb did not make: a database beyond template0, template1 and postgres,
# or an object in `postgres` (object ids from 16384 up are users').
HOLDS_DATA_SQL = "select (select count(*) from pg_database) > 3 or exists (select 1 from pg_class where oid >= 16384)"


class PostgresNode(PostgresJsonQuery):
    """Where this cluster stands: {in_recovery, system_identifier, timeline, lsn, holds_data (HOLDS_DATA_SQL)}."""

    query = ("select json_build_object('in_recovery', pg_is_in_recovery(), "
             "'system_identifier', (select system_identifier::text from pg_control_system()), "
             f"'timeline', {CURRENT_TIMELINE_SQL}, "
             "'lsn', (case when pg_is_in_recovery() then pg_last_wal_replay_lsn() else pg_current_wal_lsn() end)::text, "
             f"'holds_data', ({HOLDS_DATA_SQL}))")


class PostgresSlots(PostgresJsonQuery):
    """Physical replication slots: {name: {"active": bool}}."""

    query = ("select json_object_agg(slot_name, json_build_object('active', active)) "
             "from pg_replication_slots where slot_type = 'physical'")


class FreeBytes(FactBase):
    """Bytes available to unprivileged writers on the filesystem holding `path` (its nearest existing parent)."""

    def command(self, path):
        return f"p={quote(path)}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; df -B1 --output=avail \"$p\" | tail -1"

    def process(self, output):
        return int(output[0].strip())


class PostgresDatabases(PostgresJsonQuery):
    """{database: {"owner", "connect": roles with CONNECT on it, "PUBLIC" for everyone}}."""

    query = ("select json_object_agg(d.datname, json_build_object('owner', pg_get_userbyid(d.datdba), "
             "'connect', array(select case when a.grantee = 0 then 'PUBLIC' else pg_get_userbyid(a.grantee) end "
             "from aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) a "
             "where a.privilege_type = 'CONNECT' order by 1))) from pg_database d")


class ObjectComment(FactBase):
    """The comment on `signature` (a function's, or a table name) in `database`; '' when it or the database is
    missing. The deploy marks objects it makes from SQL with a hash of that SQL."""

    LOOKUP = {"function": ("to_regprocedure", "pg_proc"), "table": ("to_regclass", "pg_class")}

    def command(self, major, cluster, database, kind, signature):
        resolve, catalog = self.LOOKUP[kind]
        return _in_database(major, cluster, database, None,
                            f"select coalesce(obj_description({resolve}(:'signature'), '{catalog}'), '')",
                            signature=signature)

    def process(self, output):
        return "".join(output).strip()


def _in_database(major, cluster, database, relation, sql, **variables):
    """Shell: run `sql` in `database` when the database and `relation` (if any) exist; print nothing otherwise."""
    exists = psql_query(major, cluster, "select 1 from pg_database where datname = :'datname'", datname=database)
    checks = f"{exists} 2>/dev/null | grep -q 1"
    if relation:
        found = psql_query(major, cluster, "select to_regclass(:'relation') is not null", database, relation=relation)
        checks += f" && {found} | grep -q t"
    return f"if {checks}; then {psql_query(major, cluster, sql, database, **variables)}; fi"


class SqitchChanges(FactBase):
    """{change: script_hash} of `project`'s changes deployed in `database`, in deploy order; {} when the database
    or sqitch's registry is not there yet."""

    def command(self, major, cluster, database, project):
        return _in_database(major, cluster, database, "sqitch.changes",
                            "select json_object_agg(change, script_hash order by committed_at) "
                            "from sqitch.changes where project = :'project'", project=project)

    @staticmethod
    def default():
        return {}

    def process(self, output):
        return json.loads("".join(output).strip() or "{}")


class ActiveDataKey(FactBase):
    """The version of the portal's active data key (portal.encryption_keys), or None: no database, table or key."""

    def command(self, major, cluster, database):
        return _in_database(major, cluster, database, "portal.encryption_keys",
                            "select version from portal.encryption_keys where is_active")

    def process(self, output):
        text = "".join(output).strip()
        return int(text) if text else None


class UngrantedFunctions(FactBase):
    """Which of `functions` (signatures) `role` may not execute, in database postgres (all of them while the role
    does not exist); None when the cluster is not running, so nothing can be told."""

    @staticmethod
    def default():
        return None

    def command(self, major, cluster, role, functions):
        query = ("select f from unnest(string_to_array(:'functions', ';')) f where case when exists (select 1 from "
                 "pg_roles where rolname = :'role') then not has_function_privilege(:'role', f, 'execute') else true end")
        return (f"if pg_lsclusters --no-header {major} {cluster} 2>/dev/null | grep -q online; then echo checked; "
                f"{psql_query(major, cluster, query, role=role, functions=';'.join(functions))}; fi")

    def process(self, output):
        return [line.strip() for line in output[1:] if line.strip()]

class PatroniMembers(FactBase):
    """The cluster as this host's Patroni reports it (GET /cluster: {"members": [{"name", "role", "state", "lag",
    "timeline", "tags", ...}], "scope"}); {} when Patroni is not installed or does not answer."""

    @staticmethod
    def default():
        return {}

    def command(self):
        return f"if [ -x {layout.program('cluster')} ]; then {layout.program('cluster')} members; fi"

    def process(self, output):
        return json.loads("".join(output).strip() or "{}")


class PatroniConfig(FactBase):
    """The cluster's dynamic configuration in etcd (GET /config on this host's Patroni); None when it cannot tell."""

    @staticmethod
    def default():
        return None

    def command(self):
        return f"if [ -x {layout.program('cluster')} ]; then {layout.program('cluster')} config 2>/dev/null; fi; true"

    def process(self, output):
        text = "".join(output).strip()
        return json.loads(text) if text else None


class DeviceExists(FactBase):
    """Whether `path` exists and is a character device (a watchdog)."""

    def command(self, path):
        return f"if [ -c {quote(path)} ]; then echo yes; else echo no; fi"

    def process(self, output):
        return output[0].strip() == "yes"


class NewestBackup(FactBase):
    """When the newest trusted base backup in this host's archive finished (epoch; `mcp-base-backup list`); None
    when there is none, or nothing to list it with yet (a first deploy); UNREADABLE when the listing failed (S3
    out of reach, which the archive's preflight stops unless switched off; or keys this deploy puts back)."""

    UNREADABLE = "unreadable"

    def command(self):
        program, config = layout.program("base-backup"), layout.config("wal-archive.json")
        return (f"if [ -x {program} ] && [ -e {config} ]; then runuser -u postgres -- {program} list 2>/dev/null "
                "|| echo unreadable; fi")

    def process(self, output):
        if not output:
            return None
        return self.UNREADABLE if output[-1] == self.UNREADABLE else json.loads(output[-1])["finished_at"]


class FileState(FactBase):
    """A regular file's owner, group, mode (octal digits, as stat prints them) and SHA-1, in one command; None when
    the path is not a regular file (absent, a directory, or a link, which a write replaces rather than follows)."""

    def command(self, path):
        return (f"if [ -f {quote(path)} ] && [ ! -L {quote(path)} ]; then stat -c '%U %G %a' -- {quote(path)} && "
                f"sha1sum < {quote(path)}; fi")

    def process(self, output):
        if len(output) < 2:
            return None
        user, group, mode = output[0].split()
        return {"user": user, "group": group, "mode": mode, "sha1": output[1].split()[0]}


class TreeState(FactBase):
    """Every entry under a directory, but those `excluded` (name patterns, files and directories):
    {relative path ("" for the directory itself): (type f/d/l, mode, user, group, SHA-1 or None)}; None when the
    directory does not exist."""

    def command(self, path, excluded=()):
        names = " -o ".join(f"-name {quote(name)}" for name in excluded)
        prune = f"\\( {names} \\) -prune -o " if excluded else ""
        return (f"cd {quote(path)} 2>/dev/null || exit 0; find . {prune}-printf 'entry %y %m %u %g %P\\n' && "
                f"find . {prune}-type f -exec sha1sum {{}} +")

    def process(self, output):
        entries, sums = {}, {}
        for line in output:
            if line.startswith("entry "):
                kind, mode, user, group, relative = (line.split(" ", 5) + [""])[1:6]
                entries[relative] = (kind, mode, user, group)
            else:
                digest, relative = line.split("  ", 1)
                sums[relative.removeprefix("./")] = digest
        return {path: (*entry, sums.get(path)) for path, entry in entries.items()} or None
