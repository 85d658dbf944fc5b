"""The staging rebuild end to end, on the fleet used as both environments in turn. Production is the tier the other
tiers left, archiving into `local`, given production-like personal data; staging is the same hosts rebuilt from that
archive by `make staging-rebuild` as the environment `staging` (its archive prefix), which ends with tests/infra on
the result. Nothing personal may be left: a raw-byte scan of every data directory and pg_wal on every database host
and of every object under staging's prefix looks for a token each personal value holds."""

import gzip
import json
import re
import subprocess
import uuid

import pytest

from fleet.layout import Layout
from fleet.s3endpoint import client
from hostside import envelope
from tests.e2e.test_deploy import REPO, changed_operations, deploy, grand_total, pyinfra_argv
from tests.e2e.test_encryption import TABLE, fleet_keys, keyring
from tests.e2e.test_pgbouncer import connect
from tests.e2e.test_wal_archive import eventually
from tests.fleet_helpers import DATABASE, leader, on

TOKEN = f"pii{uuid.uuid4().hex[:16]}"  # in every personal value production holds
USERS = 12
SOURCE = ["--data", "restore_source_prefix=local", "--data", "restore_source_credentials=.fleet/s3/wal-archiver.json"]
AS_STAGING = ["--data", "wal_archive_prefix=staging"]
GENERATION = "/etc/mcp-portal/archive-generation"
DUMP = "/var/lib/postgresql/staging-rebuild/portal.dump"


def sql(query, host=None):
    return on(host or leader(), f"runuser -u postgres -- psql -d portal -XAtq -v ON_ERROR_STOP=1 <<'SQL'\n{query}\nSQL"
              ).stdout.strip()


def admin_s3():
    return client("s3", json.loads((Layout().local / "s3.json").read_text()))


@pytest.fixture(scope="module")
def production():
    """Users with e-mails, names, Azure ids and metadata, their sessions (token hashes, addresses, user agents),
    configs sealed with production's data key, and audit rows with details, addresses and changed values, a month
    of them archived; all of it archived to S3. Returns what staging must not keep."""
    sql(f"""
        insert into portal.users (azure_oid, email, display_name, metadata)
          select '{TOKEN}-oid-' || i, '{TOKEN}.' || i || '@example.com', '{TOKEN} Person ' || i,
                 jsonb_build_object('phone', '{TOKEN}-' || i) from generate_series(1, {USERS}) i;
        insert into portal.user_sessions (user_id, token_sha256, expires_at, client_ip, user_agent)
          select id, sha256(convert_to(id::text, 'UTF8')), now() + interval '1 day', '203.0.113.7', '{TOKEN}-agent'
            from portal.users where email like '{TOKEN}.%';
        insert into portal.audit_logs (user_id, action, details, client_ip)
          select id, 'login', jsonb_build_object('email', email), '203.0.113.7' from portal.users where email like '{TOKEN}.%';
        create table if not exists portal.audit_logs_2020_01 partition of portal.audit_logs_archive
          for values from ('2020-01-01') to ('2020-02-01');
        insert into portal.audit_logs_archive (logged_at, action, details, client_ip)
          values ('2020-01-15', 'login', '{{"email": "{TOKEN}.archived@example.com"}}', '203.0.113.8');
        insert into portal.mcp_servers (name, display_name) values ('rebuild-server', 'Rebuild') on conflict do nothing;
        """)
    ids = sql(f"select id from portal.users where email like '{TOKEN}.%' order by id").split()
    ring = keyring(client("kms", fleet_keys("portal-keys")[1]))
    server = sql("select id from portal.mcp_servers where name = 'rebuild-server'")
    rows = []
    for user in ids:
        row_id = str(uuid.uuid4())
        sealed = envelope.encrypt(ring, f'{{"api_key": "{TOKEN}-secret"}}'.encode(), TABLE, row_id)
        rows.append(f"('{row_id}', '{user}', '{server}', '{json.dumps(sealed)}', {sealed['key_version']})")
    sql("insert into portal.user_server_configs (id, user_id, server_id, encrypted_config, key_version) values "
        + ", ".join(rows) + f";\nupdate portal.audit_changes set old_value = '{TOKEN}' where user_id in ({', '.join(repr(i) for i in ids)});")
    closed = sql("select pg_walfile_name(pg_switch_wal())")
    eventually(lambda: sql("select last_archived_wal from pg_stat_archiver") >= closed, what=f"{closed} archived")
    return {"users": ids, "data_keys": sql("select encode(wrapped_key, 'hex') from portal.encryption_keys").split()}


def rebuild_refused(*data):
    result = subprocess.run(pyinfra_argv("-y", "--fail-percent", "0", "inventory/local.py", "rebuild_staging.py", *data), cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    return result.returncode, result.stdout + result.stderr


def nothing_changed():
    for name in DATABASE:
        assert on(name, "systemctl is-active patroni@17-main").stdout.strip() == "active", name
        assert on(name, f"test -e {GENERATION} || test -e {DUMP} || test -e /var/lib/postgresql/17/staging_scrub",
                  check=False).returncode == 1, name


@pytest.mark.parametrize("data, message", [
    (SOURCE, "the source s3://mcp-portal-archive/local is this inventory's own archive"),
    (["--data", "restore_source_prefix=no-such-archive", *SOURCE[2:], *AS_STAGING],
     "base_backup restore: no verified backup of this cluster"),
    ([*SOURCE, *AS_STAGING, "--data", "restore_target_time=2000-01-01 00:00:00+00"],
     "REFUSED: the target is before the oldest verified backup ended: the archive restores from "),
], ids=["production's own archive", "a source it cannot read", "a target outside the source's window"])
def test_a_rebuild_that_cannot_be_right_is_refused_in_one_line_before_any_change(production, data, message):
    returncode, output = rebuild_refused(*data)
    assert returncode != 0 and message in output, output[-3000:]
    nothing_changed()
    assert sql(f"select count(*) from portal.users where email like '{TOKEN}.%'") == str(USERS)


def test_a_fail_percent_above_0_is_refused_before_any_change(production):
    """config.py's --fail-percent 0 makes one host's failed copy stop every host's clearing; the command line can
    change it."""
    result = subprocess.run(pyinfra_argv("-y", "--fail-percent", "50", "inventory/local.py", "rebuild_staging.py",
                                         *SOURCE, *AS_STAGING),
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode != 0 and "run it with --fail-percent 0" in result.stdout + result.stderr
    nothing_changed()


@pytest.fixture(scope="module")
def rebuilt(production):
    """`make staging-rebuild`: the one command, ending with tests/infra on the rebuilt tier."""
    data = " ".join(f"'{word}'" if " " in word else word for word in [*SOURCE, *AS_STAGING])
    result = subprocess.run(["make", "-s", "--no-print-directory", "staging-rebuild", "INVENTORY=inventory/local.py",
                             f"DATA={data}"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    summary = [line for line in result.stdout.splitlines() if re.search(r"\b\d+ passed\b", line)]
    assert summary and "failed" not in summary[-1], result.stdout[-2000:]  # tests/infra's summary
    generation = on(DATABASE[0], f"cat {GENERATION}").stdout.strip()
    return {"prefix": f"staging-{generation}", "output": output}


def test_no_personal_value_is_left_in_any_data_directory_or_pg_wal_of_staging(rebuilt):
    for name in DATABASE:
        found = on(name, f"grep -r -a -l -F '{TOKEN}' /var/lib/postgresql", check=False)
        assert found.returncode == 1 and not found.stdout, f"{name}: {found.stdout}"
        # The scan reads what the rebuild wrote: the pseudonyms are there, on every member.
        assert on(name, "grep -r -a -l -F '@staging.invalid' /var/lib/postgresql/17/main").stdout, name


def test_no_personal_value_is_in_any_object_of_stagings_archive(rebuilt):
    s3, prefix = admin_s3(), rebuilt["prefix"]
    # moto refuses the signature of a listing whose prefix holds a "/": list without it, filter here.
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mcp-portal-archive", Prefix=prefix)
            for o in page.get("Contents", []) if o["Key"].startswith(f"{prefix}/")]
    assert any(key.endswith("/backup.json") for key in keys), keys  # the new cluster's first backup
    pseudonyms = 0
    for key in keys:
        body = s3.get_object(Bucket="mcp-portal-archive", Key=key)["Body"].read()
        raw = gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body
        assert TOKEN.encode() not in raw, key
        pseudonyms += b"@staging.invalid" in raw
    assert pseudonyms, "no object holds the scrubbed users: the scan read nothing of them"


def test_staging_holds_the_users_scrubbed_and_nothing_of_productions_keys(production, rebuilt):
    ids = production["users"]
    listed = ", ".join(f"'{i}'" for i in ids)
    assert sql(f"select string_agg(email || '|' || display_name || '|' || azure_oid || '|' || metadata::text, ',' "
               f"order by id) from portal.users where id in ({listed})") == ",".join(
        f"user-{i}@staging.invalid|User {i[:8]}|staging-{i}|{{}}" for i in ids)
    # Production's rows, as tests/infra (run by the rebuild) may have written rows of its own since.
    assert sql(f"select count(*) from portal.user_sessions where user_id in ({listed})") == "0"
    assert sql(f"select count(*) filter (where client_ip is not null or details <> '{{}}'), count(*) "
               f"from portal.audit_logs where user_id in ({listed})") == f"0|{USERS * 2}"  # logins, configs made
    assert sql("select count(*) filter (where client_ip is not null or details <> '{}'), count(*) from "
               "portal.audit_logs_archive where logged_at >= '2020-01-01' and logged_at < '2020-02-01'") == "0|1"
    assert sql(f"select count(*) filter (where old_value <> 'SCRUBBED'), count(*) from portal.audit_changes "
               f"where user_id in ({listed})") == f"0|{USERS}"
    keys = sql("select encode(wrapped_key, 'hex') || '|' || version || '|' || is_active from portal.encryption_keys")
    assert keys.split("|")[1:] == ["1", "true"] and keys.split("|")[0] not in production["data_keys"], keys
    assert sql("select count(*) from portal.mv_user_dashboard where email like '%@staging.invalid'") == sql(
        "select count(*) from portal.users where email like '%@staging.invalid'")
    assert sql("select setting from pg_settings where name = 'archive_mode'") == "on"


def test_the_app_works_in_staging_with_stagings_keys(production, rebuilt):
    user = production["users"][0]
    ring = keyring(client("kms", fleet_keys("portal-keys")[1]))
    with connect("portal") as app, app.transaction():
        app.execute("select portal.set_tenant(%s)", (user,))
        configs = app.execute("select id, encrypted_config from portal.user_server_configs").fetchall()
    assert len(configs) == 1
    assert envelope.decrypt(ring, configs[0][1], TABLE, str(configs[0][0])) == b'{"synthetic": true}'


def test_a_deploy_after_the_rebuild_changes_nothing(rebuilt):
    output = deploy(*AS_STAGING)
    assert grand_total(output)[1:3] == (0, 0), changed_operations(output)

