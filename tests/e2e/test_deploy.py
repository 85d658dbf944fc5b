"""`pyinfra inventory/local.py deploy.py` on the fleet: converges, and a second run changes nothing."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pyinfra.operations.apt import APT_UPDATE_FILENAME  # the stamp whose mtime apt's cache_time reads

from fleet.access import OPERATOR
from hostside import layout
from tests.fleet_helpers import DATABASE, TOPOLOGY, fleet, leader, on

PYINFRA = str(Path(sys.executable).with_name("pyinfra"))
REPO = Path(__file__).resolve().parents[2]


# Every deploy of the tiers as prod runs them (an unprivileged SSH user with sudo) costs ~8 s more per run than
# as root; test_operator_deploy.py always deploys that way, the rest only when this is set (README: Test tiers).
AS_OPERATOR = os.environ.get("MCP_E2E_AS_OPERATOR") == "1"


def pyinfra_argv(*args, as_operator=AS_OPERATOR):
    """pyinfra as root, as `make local` runs it, or as prod runs it: logged in as an unprivileged user that becomes
    root through sudo (the fleet makes it; test_operator_deploy.py watches that no secret shows on the way)."""
    return [PYINFRA, *(("--user", OPERATOR, "--sudo") if as_operator else ()), *args]


def pyinfra_run(*args):
    return subprocess.run(pyinfra_argv("inventory/local.py", "deploy.py", *args), cwd=REPO,
                          capture_output=True, text=True, timeout=1800)


def pyinfra(*args):
    result = pyinfra_run(*args)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if re.search(r"\b(Error|error:|Traceback)", line)]
    assert result.returncode == 0, "\n".join(errors[:40]) + "\n...\n" + output[-3000:]
    return result.stdout + result.stderr  # pyinfra reports on stderr


def deploy(*extra):
    return pyinfra("-y", *extra)


def planned_changes(*extra):
    """{operation: (change, conditional change)} from `--dry`'s "Detected changes" table."""
    table = pyinfra("--dry", *extra).split("--> Detected changes:")[1].split("Detected changes may not")[0]
    rows = [line.strip() for line in table.strip().splitlines()[1:] if line.strip()]
    return {re.split(r"\s{3,}", row)[0]: tuple(re.split(r"\s{3,}", row)[1:]) for row in rows}


def changed_operations(output):
    """{operation: hosts it changed} from a real run's results table."""
    table = output.split("--> Results:")[1].split("Grand total")[0]
    rows = [re.split(r"\s{3,}", line.strip()) for line in table.strip().splitlines()[1:] if line.strip()]
    return {row[0]: int(row[2]) for row in rows if row[2] != "-"}


def grand_total(output):
    """(hosts, changed, errors, unchanged) from pyinfra's results table; '-' counts as 0."""
    line = re.search(r"^\s*Grand total\s+(.*)$", output, re.M).group(1)
    return tuple(0 if cell == "-" else int(cell) for cell in line.split())


PENDING_FILE = "/etc/mcp-portal/roles"  # on the first database host: conftest.py's a_pending_change removes it


def still_pending():
    """Whether the change a_pending_change left is still pending: no operation ran."""
    return on(DATABASE[0], f"test -e {PENDING_FILE}", check=False).returncode == 1


def test_deploy_converges_then_a_second_run_changes_nothing():
    # The session's first deploy (conftest.py) converged the fleet; this is the second run, with every host's package
    # index last refreshed two hours ago (apt's stamp backdated): a host that has its packages refreshes nothing.
    for name in (h.name for h in TOPOLOGY.hosts):
        on(name, f"touch -d '2 hours ago' {APT_UPDATE_FILENAME}")
    output = deploy()
    hosts, changed, errors, unchanged = grand_total(output)
    assert (changed, errors) == (0, 0), changed_operations(output)
    assert unchanged > 0


def backups_listed():
    """The trusted backups' records as the leader's `mcp-base-backup list` gives them ([] before a first deploy)."""
    program, lead = layout.program("base-backup"), leader()
    listed = on(lead, f"test -x {program} && runuser -u postgres -- {program} list", check=False).stdout if lead else ""
    return [json.loads(line) for line in listed.splitlines()]


def test_the_first_deploy_takes_a_verified_backup_and_so_would_one_that_finds_none_recent_enough(deployed):
    """Point-in-time recovery from a first deploy's first minute (the timer's first run may be a day away); a deploy
    after backups stopped plans one too: here, with a backup_max_age_h the newest backup is already older than."""
    if not deployed["archive_had_a_backup"]:  # a fresh archive (CI's): the session's first deploy took the first
        assert "Take a verified base backup now (none found in the archive; backup_max_age_h 26)" in deployed["output"]
        first = backups_listed()
        assert first and first[0]["verified"]
    assert backups_listed()
    plan = planned_changes("--data", "backup_max_age_h=0.0001")  # 0.36 s
    backup = [(op, change) for op, change in plan.items() if "Take a verified base backup now" in op]
    assert len(backup) == 1 and backup[0][1] == (f"1 ({leader()})", "-")
    assert re.fullmatch(r"A recent verified base backup \| Take a verified base backup now \(the newest is \d+\.\d h "
                        r"old; backup_max_age_h 0.0001\)", backup[0][0])


def test_dry_run_tells_the_truth_about_drift():
    assert set(planned_changes().values()) == {("-", "-")}
    on("pg-2", "rm /etc/mcp-portal/roles")
    drifted = {op: plan for op, plan in planned_changes().items() if plan != ("-", "-")}
    assert list(drifted.values()) == [("1 (pg-2)", "-")]
    deploy()
    assert on("pg-2", "test -f /etc/mcp-portal/roles").returncode == 0


def test_the_pgdg_repository_option_plans_a_signed_source_and_a_refresh():
    # Not applied: apt.postgresql.org is out of this machine's reach. The plan shows what prod would get.
    planned = planned_changes("--data", "postgres_apt_repository=pgdg")
    database_hosts = "3 (pg-1, pg-2, pg-3)"
    assert planned["PostgreSQL server | PGDG apt repository"][0] == database_hosts
    assert planned["PostgreSQL server | Refresh the package index (PGDG added)"][0] == database_hosts
    refused = pyinfra_run("--dry", "--data", "postgres_apt_repository=ubuntu")
    assert refused.returncode != 0
    assert "--data on the command line: postgres_apt_repository = 'ubuntu': use 'debian' or 'pgdg'" in refused.stderr


def test_a_rolling_minor_update_of_an_up_to_date_fleet_changes_nothing():
    result = subprocess.run(pyinfra_argv("-y", "inventory/local.py", "minor_update.py"), cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert grand_total(result.stderr)[1:3] == (0, 0)
    versions = on("pg-2", "dpkg-query -W -f '${Version}' postgresql-17").stdout
    assert versions == on("pg-2", "apt-cache policy postgresql-17 | sed -n 's/ *Candidate: //p'").stdout.strip()


@pytest.mark.usefixtures("a_pending_change")
class TestRefusals:
    """Runs stopped before any change: each leaves the pending change pending; the deploy after them converges."""

    def test_an_unreachable_host_stops_the_run_before_any_change(self):
        fleet("cut", "pg-3")
        try:
            result = pyinfra_run("-y")
        finally:
            fleet("heal", "pg-3")
        assert result.returncode != 0
        assert "pg-3: unreachable over ssh (Could not connect, above)" in result.stderr.strip().splitlines()[-1]
        assert still_pending()

    @pytest.mark.parametrize("override, message", [
        ("heartbeat_interval_s=7", "heartbeat_interval_s = 7: use 1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30 or 60"),
        ("wal_archive_sse=rot13", "wal_archive_sse = 'rot13': use 'AES256' or 'aws:kms'"),
        ("wal_archive_compression=zip", "wal_archive_compression = 'zip': use 'none' or 'gzip'"),
        ("wal_archive_credentials=/nonexistent.json", "the WAL archive's S3 credentials file /nonexistent.json is missing"),
        ("backup_retention_days=0", "backup_retention_days = 0: Input should be greater than 0"),
        ("patroni_watchdog=sometimes", "patroni_watchdog = 'sometimes': use 'off', 'automatic' or 'required'"),
        ('portal_database_users=["portal_app","nobody"]', "portal_database_users names nobody, not in postgres_roles"),
        ("schema_lock_timeout=soon", "schema_lock_timeout = 'soon': lock_timeout = 'soon' is not a number"),
        ("portal_database_owner=someone", "portal_database_owner = 'someone': use 'portal_owner'"),
        ("audit_partitions_ahead=1", "audit_partitions_ahead 1 is less than audit_partitions_min_ahead 2"),
        ("portal_kms_key_id=", "portal_kms_key_id is not set"),
        ("key_rotation_batch=0", "key_rotation_batch = 0: Input should be greater than or equal to 1"),
        ("portal_kms_credentials=/nonexistent.json", "the portal's KMS credentials file /nonexistent.json is missing"),
        ("backup_max_age_h=soon", "backup_max_age_h = 'soon': Input should be a valid number"),
        ("synchronous_replication=yes", "synchronous_replication = 'yes': use true or false"),
        ("postgres_setings={}", "postgres_setings: unknown knob; did you mean postgres_settings?"),
        ("wal_archive_prefix=../other", "wal_archive_prefix = '../other': path segments of letters"),
        ('pgbouncer_pool={"auth_type": "trust"}', "pgbouncer_pool.auth_type: unknown key; pgbouncer_pool takes pool_mode"),
    ])
    def test_bad_group_data_is_one_line_before_any_change(self, override, message):
        result = pyinfra_run("-y", "--data", override)
        assert result.returncode != 0 and message in result.stderr
        assert f"--data on the command line: {override.split('=')[0]}" in result.stderr or "credentials file" in message
        assert still_pending()

    def test_an_operation_that_fails_on_one_host_stops_every_host(self):
        """config.py's FAIL_PERCENT 0; pyinfra would otherwise go on with the other hosts. Last in the class: the
        failing operation (the roles file, immutable on pg-3) changes the pending file on the hosts it runs on."""
        tier_metrics = f"{layout.METRICS_DIR}/tier.prom"  # put by an operation far after the roles file
        on("pg-3", f"rm {PENDING_FILE} && touch {PENDING_FILE} && chattr +i {PENDING_FILE}")
        on("pgbouncer-1", f"rm {tier_metrics}")
        try:
            result = pyinfra_run("-y")
        finally:
            on("pg-3", f"chattr -i {PENDING_FILE}")
        assert result.returncode != 0 and "Over 0% of hosts failed" in result.stderr, result.stderr[-3000:]
        assert on("pgbouncer-1", f"test -e {tier_metrics}", check=False).returncode == 1
