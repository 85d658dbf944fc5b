"""The knobs' schema: every knob declared once, unknown keys and values of the wrong shape refused in one line that
names the host, where it was set and the key; docs/knobs.md generated from it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jinja2 import Template

from deploys.knobs import KNOBS, Knobs, KnobError, Tier, check, markdown
from deploys.pgconfig import settings as pg_settings
from hostside.layout import Cluster

REPO = Path(__file__).resolve().parents[2]


def refused(**values):
    with pytest.raises(KnobError) as raised:
        check(values, "pg-1", lambda key: "group_data/local.py")
    message = str(raised.value)
    assert "\n" not in message and message.startswith("pg-1: group_data/local.py: ")
    return message


def test_every_knob_has_a_default_that_passes_and_a_description():
    Tier()  # every default validates
    for name in KNOBS:
        assert Tier.model_fields[name].description, f"{name} has no description"


def test_a_typo_is_refused_with_a_suggestion():
    assert refused(postgres_setings={}) == ("pg-1: group_data/local.py: postgres_setings: unknown knob; "
                                            "did you mean postgres_settings?")


def test_pyinfras_own_keys_pass():
    check({"ssh_hostname": "198.51.100.11", "ssh_user": "root", "_sudo": True}, "pg-1", lambda key: "x")


@pytest.mark.parametrize("values, message", [
    # What the audit found open: a pg_hba.conf rule and a second auth_type through a knob.
    ({"postgres_hba_extra": [{"database": "all all 0.0.0.0/0 trust #", "user": "all", "address": "198.51.100.0/24",
                              "method": "scram-sha-256"}]}, "postgres_hba_extra[0].database = 'all all 0.0.0.0/0 trust #'"),
    ({"postgres_hba_extra": [{"database": "all", "user": "all", "address": "10.0.0.0/8", "method": "trust"}]},
     "postgres_hba_extra[0].method = 'trust'"),
    ({"postgres_hba_extra": [{"database": "all", "user": "all", "address": "10.0.0.1/8"}]},
     "postgres_hba_extra[0].address = '10.0.0.1/8': a network in CIDR form"),
    ({"pgbouncer_pool": {"auth_type": "trust"}}, "pgbouncer_pool.auth_type: unknown key; pgbouncer_pool takes pool_mode"),
    ({"wal_archive_prefix": "../other"}, "wal_archive_prefix = '../other'"),
    ({"wal_archive_prefix": "tier/../other"}, "wal_archive_prefix = 'tier/../other'"),
    ({"postgres_settings": {"shared_buffers": "lots"}}, "postgres_settings: shared_buffers = 'lots' is not a number"),
    ({"postgres_settings": {"log_line_prefix": "%m\nlisten_addresses = '*'"}}, "postgres_settings: 'log_line_prefix': one line"),
    ({"postgres_settings": {"shared_buffers\nssl": "off"}}, "postgres_settings: 'shared_buffers\\nssl': a PostgreSQL parameter name"),
    ({"postgres_roles": {"portal_app": {"login": True, "settings": {"statement_timeout": "1s'; drop role x; --"}}}},
     "postgres_roles.portal_app.settings: statement_timeout"),
    ({"postgres_roles": {"pg_evil": {}}}, "postgres_roles: pg_evil: names starting with pg_"),
    ({"postgres_roles": {"portal_maintenance": {"login": True, "bypassrls": True}}},
     "postgres_roles: portal_maintenance: a role with bypassrls may not log in"),
    ({"postgres_roles": {"Portal": {}}}, "postgres_roles.Portal.[key]"),
    ({"postgres_roles": {"x": {"login": "yes"}}}, "postgres_roles.x.login = 'yes': use true or false"),
    ({"synchronous_replication": "yes"}, "synchronous_replication = 'yes': use true or false"),
    ({"postgres_apt_repository": "ubuntu"}, "postgres_apt_repository = 'ubuntu': use 'debian' or 'pgdg'"),
    ({"heartbeat_interval_s": 7}, "heartbeat_interval_s = 7"),
    ({"backup_schedule": "daily\nExecStartPre=/bin/sh -c evil"}, "backup_schedule"),
    ({"backup_work_dir": "/var/lib/x; rm -rf /"}, "backup_work_dir = '/var/lib/x; rm -rf /'"),
    ({"portal_database": 'portal"; drop database x; --'}, "portal_database"),
    ({"pgbouncer_auth_database": "pgbouncer"}, "'pgbouncer' is PgBouncer's admin console"),
    ({"wal_archive_sse": "aws:kms"}, "wal_archive_kms_key_id is empty but wal_archive_sse is aws:kms"),
    ({"portal_kms_endpoint_url": "http://kms.example:4566"}, "portal_kms_endpoint_url = 'http://kms.example:4566': plain http"),
    ({"restore_source_endpoint_url": "http://s3.example"}, "restore_source_endpoint_url = 'http://s3.example': plain http"),
    ({"restore_target_time": "2026-11-25 16:00:00+00", "restore_target_lsn": "0/3000000"}, "set one restore_target_* key"),
    ({"restore_target_time": "now'; rm -rf /"}, "restore_target_time"),
    ({"audit_partitions_ahead": 1}, "audit_partitions_ahead 1 is less than audit_partitions_min_ahead 2"),
    ({"postgres_memory_budget_mb": 100}, "postgres_memory_budget_mb = 100: Input should be greater than or equal to 256"),
    ({"postgres_major": 16}, "postgres_major = 16"),
    ({"postgres_listen_address": "0.0.0.0 #"}, "postgres_listen_address = '0.0.0.0 #': an IP address"),
    ({"metrics_scrape_user": "prometheus: $2b$"}, "metrics_scrape_user"),
    ({"schema_lock_timeout": "soon"}, "schema_lock_timeout = 'soon': lock_timeout = 'soon' is not a number"),
    ({"patroni_ttl": 20, "patroni_loop_wait": 15}, "patroni_ttl 20 is less than patroni_loop_wait 15 + 2 x patroni_retry_timeout 10"),
    ({"etcd_election_timeout_ms": 400}, "etcd_election_timeout_ms 400 is less than 5 heartbeats"),
    ({"patroni_scope": "MCP Portal"}, "patroni_scope = 'MCP Portal'"),
])
def test_a_bad_value_is_one_line_naming_host_file_and_key(values, message):
    assert message in refused(**values)


STRING_KNOBS = [name for name, field in Tier.model_fields.items() if field.annotation is str]
# Knobs whose value sits in a line with spaces around it (a systemd calendar, a shell-quoted timestamp).
SPACED = {"backup_schedule", "backup_retention_schedule", "drill_schedule", "audit_partitions_schedule",
          "dashboard_refresh_schedule", "restore_target_time", "schema_lock_timeout"}
TEXT = st.text(alphabet=st.sampled_from("abcz019./:_-*~+ \t\n\r'\"#;$`\\\x00"), min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(STRING_KNOBS), value=TEXT)
def test_no_string_knob_accepts_what_could_start_a_directive_and_every_refusal_names_it(name, value):
    try:
        check({name: value}, "pg-1", lambda key: "group_data/local.py")
    except KnobError as exc:
        assert f": {name}" in str(exc) and "\n" not in str(exc)
        return
    forbidden = "\n\r\x00'\"#;$`\\" + ("" if name in SPACED else " \t")
    assert not set(value) & set(forbidden), f"{name} accepted {value!r}"


@settings(max_examples=60, deadline=None)
@given(value=st.text(alphabet=st.sampled_from("ab%' =\n#;\\"), min_size=1, max_size=12))
def test_a_string_setting_is_one_quoted_line_of_postgresql_conf(value):
    try:
        Tier(postgres_settings={"log_line_prefix": value})
    except ValueError:
        assert "\n" in value
        return
    template = Template((REPO / "templates" / "postgresql.conf.j2").read_text())
    rendered = template.render(settings=pg_settings(1024, 100, {"log_line_prefix": value}), cluster=Cluster(17, "main"),
                               port=5432, budget_mb=1024)
    line = [li for li in rendered.splitlines() if li.startswith("log_line_prefix = ")]
    assert line == ["log_line_prefix = '" + value.replace("'", "''") + "'"]


def test_components_declare_each_knob_once():
    components = [c for c in Tier.__mro__ if issubclass(c, Knobs) and c not in (Tier, Knobs)]
    declared = [name for c in components for name in c.__annotations__ if name in Tier.model_fields]
    assert sorted(declared) == sorted(set(declared)) == sorted(KNOBS)


def test_docs_knobs_md_is_generated_from_the_schema():
    assert (REPO / "docs" / "knobs.md").read_text() == markdown(), "run: python -m deploys.knobs > docs/knobs.md"
    for name in KNOBS:
        assert re.search(rf"^\| `{name}` \|", markdown(), re.M)


def test_the_generator_is_the_module():
    out = subprocess.run([sys.executable, "-m", "deploys.knobs"], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout == markdown()


def test_plain_http_endpoints_pass_only_where_allowed():
    assert "wal_archive_endpoint_url = 'http://198.51.100.30:9000': plain http" in refused(
        wal_archive_endpoint_url="http://198.51.100.30:9000")
    check({"wal_archive_endpoint_url": "http://198.51.100.30:9000", "plain_http_endpoints": True}, "pg-1", lambda k: "x")
    check({"wal_archive_endpoint_url": "https://s3.example"}, "pg-1", lambda k: "x")
