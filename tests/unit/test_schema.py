"""The migrations as files: a complete sqitch project, linted by squawk, transactional except where they cannot
be, and the deploy's plan-time decisions (what is pending, what is refused) without a database."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploys.knobs import RoleSpec, Roles
from deploys.schema import SQL_DIR, pending_changes, plan_changes, roles_problem, script_hash

SQUAWK = Path(sys.executable).with_name("squawk")


def test_every_planned_change_has_deploy_revert_and_verify_scripts_and_nothing_else_is_there():
    planned = set(plan_changes())
    assert len(planned) == len(plan_changes()) >= 10
    for kind in ("deploy", "revert", "verify"):
        assert {p.stem for p in (SQL_DIR / kind).glob("*.sql")} == planned, kind


def test_squawk_finds_nothing_in_the_migrations():
    done = subprocess.run([str(SQUAWK), "-c", str(SQL_DIR / ".squawk.toml"), "--reporter", "gcc",
                           *sorted(str(p) for p in (SQL_DIR / "deploy").glob("*.sql"))],
                          capture_output=True, text=True, env={"NO_COLOR": "1"})
    assert done.returncode == 0, done.stdout + done.stderr


def test_squawk_would_catch_a_blocking_index_on_a_live_table(tmp_path):
    (tmp_path / "bad.sql").write_text("BEGIN;\nCREATE INDEX idx_x ON portal.users (email);\nCOMMIT;\n")
    done = subprocess.run([str(SQUAWK), "-c", str(SQL_DIR / ".squawk.toml"), "--reporter", "gcc",
                           str(tmp_path / "bad.sql")], capture_output=True, text=True, env={"NO_COLOR": "1"})
    assert done.returncode != 0 and "require-concurrent-index-creation" in done.stdout


@pytest.mark.parametrize("change", plan_changes())
def test_changes_are_transactions_unless_they_build_indexes_concurrently(change):
    for kind in ("deploy", "revert"):
        script = (SQL_DIR / kind / f"{change}.sql").read_text()
        concurrent = "CONCURRENTLY" in script
        assert ("BEGIN;" in script and script.rstrip().endswith("COMMIT;")) != concurrent, f"{kind}/{change}.sql"


def copy_project(tmp_path):
    shutil.copytree(SQL_DIR, tmp_path / "sql")
    return tmp_path / "sql"


def deployed(sql_dir, changes):
    return {change: script_hash(sql_dir / "deploy" / f"{change}.sql") for change in changes}


def test_pending_is_what_follows_the_deployed_prefix(tmp_path):
    sql_dir = copy_project(tmp_path)
    planned = plan_changes(sql_dir)
    assert pending_changes({}, sql_dir) == planned
    assert pending_changes(deployed(sql_dir, planned[:3]), sql_dir) == planned[3:]
    assert pending_changes(deployed(sql_dir, planned), sql_dir) == []


def test_a_deployed_script_edited_afterwards_is_refused_naming_it(tmp_path):
    sql_dir = copy_project(tmp_path)
    planned = plan_changes(sql_dir)
    done = deployed(sql_dir, planned[:2])
    with (sql_dir / "deploy" / f"{planned[1]}.sql").open("a") as script:
        script.write("-- an edit\n")
    with pytest.raises(ValueError, match=f"sql/deploy/{planned[1]}.sql was edited after it was deployed"):
        pending_changes(done, sql_dir)


def test_a_database_ahead_of_or_beside_the_plan_is_refused(tmp_path):
    sql_dir = copy_project(tmp_path)
    planned = plan_changes(sql_dir)
    with pytest.raises(ValueError, match="not the start of sql/sqitch.plan"):
        pending_changes({**deployed(sql_dir, planned[:1]), "hotfix": "0" * 40}, sql_dir)
    with pytest.raises(ValueError, match="not the start of sql/sqitch.plan"):
        pending_changes(deployed(sql_dir, [planned[1]]), sql_dir)


def test_a_planned_change_without_its_scripts_is_refused(tmp_path):
    sql_dir = copy_project(tmp_path)
    with (sql_dir / "sqitch.plan").open("a") as plan:
        plan.write("orphan 2026-11-25T20:00:00Z a <a@b.invalid> # no scripts\n")
    with pytest.raises(ValueError, match="change orphan has no deploy/orphan.sql, revert/orphan.sql, verify/orphan.sql"):
        pending_changes({}, sql_dir)


def roles_with(**changes):
    roles = dict(Roles().postgres_roles)
    for name, spec in changes.items():
        if spec is None:
            del roles[name]
        else:
            roles[name] = RoleSpec(**spec)
    return roles


@pytest.mark.parametrize("changes, problem", [
    ({}, None),
    ({"portal_reporting": None}, "lacks portal_reporting"),
    ({"portal_app": {"login": True, "bypassrls": True}}, "portal_app must have neither bypassrls"),
    ({"portal_app": {"login": True, "member_of": ["portal_admin"]}}, "portal_app must have neither"),
    ({"portal_definer": {"bypassrls": True, "login": True}}, "portal_definer must be bypassrls and not login"),
    ({"portal_owner": {}}, "portal_owner must be member_of portal_definer"),
])
def test_roles_the_migrations_rely_on(changes, problem):
    found = roles_problem(roles_with(**changes))
    assert found == problem if problem is None else problem in found
