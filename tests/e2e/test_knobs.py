"""Knobs on the fleet: what an audit found getting through group_data is refused before any host changes, in one line
naming the host, the file and the key (deploys/knobs.py). Checked by every managed file's checksum on every host."""

import re

import pytest

from tests.e2e.test_deploy import pyinfra_run
from tests.fleet_helpers import TOPOLOGY, on

MANAGED = "/etc/mcp-portal /etc/postgresql /etc/patroni /etc/haproxy /etc/pgbouncer /etc/systemd/system /etc/default /usr/local/lib/mcp-portal"


def checksums():
    """{host: md5sum of every file under the directories the deploy writes}, bytecode caches aside (Python's, not ours)."""
    return {h.name: on(h.name, f"find {MANAGED} -type f -not -path '*/__pycache__/*' 2>/dev/null | sort | xargs -r md5sum").stdout
            for h in TOPOLOGY.hosts}


@pytest.mark.parametrize("group_data, message", [
    ('postgres_setings = {"work_mem": "8MB"}',
     "postgres_setings: unknown knob; did you mean postgres_settings?"),
    ('postgres_hba_extra = [{"database": "all all 0.0.0.0/0 trust #", "user": "all", "address": "198.51.100.0/24", '
     '"method": "scram-sha-256"}]', "postgres_hba_extra[0].database = 'all all 0.0.0.0/0 trust #': all, replication"),
    ('pgbouncer_pool = {"auth_type": "trust"}', "pgbouncer_pool.auth_type: unknown key; pgbouncer_pool takes pool_mode"),
    ('wal_archive_prefix = "../other"', "wal_archive_prefix = '../other': path segments"),
    ('postgres_settings = {"log_line_prefix": "%m\\nssl = off"}', "postgres_settings: 'log_line_prefix': one line"),
    ('backup_schedule = "daily\\nExecStartPre=/bin/true"', "backup_schedule = 'daily\\nExecStartPre=/bin/true'"),
    ('replica_purposes = {"pg-9": "reporting"}',
     "replica_purposes names pg-9, not a database host of the inventory (pg-1, pg-2, pg-3)"),
    ('postgres_settings = {"synchronous_standby_names": "*"}',
     "postgres_settings: synchronous_standby_names: set by Patroni"),
], ids=["typo", "hba injection", "pool auth_type", "prefix", "setting newline", "unit newline", "unknown replica",
        "Patroni's setting"])
def test_a_bad_knob_changes_no_file_on_any_host(tmp_path, group_data, message):
    (tmp_path / "local.py").write_text(group_data + "\n")  # the fleet's group: over group_data/local.py
    before = checksums()
    result = pyinfra_run("-y", "--group-data", str(tmp_path))
    assert result.returncode != 0
    # pyinfra prints the refusal on one line after where it was raised: "--> pyinfra error in FILE line N: ..."
    errors = [line for line in (result.stdout + result.stderr).splitlines() if message in line]
    # Knobs are checked for every host before any operation, the first host first; what the Patroni deploy refuses,
    # each database host refuses as it plans, in no set order.
    assert len(errors) == 1 and re.search(rf": pg-\d: group_data/local.py: {re.escape(message)}", errors[0]), \
        result.stderr[-2000:]
    assert checksums() == before
