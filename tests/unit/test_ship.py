"""deploys/ship.py: the commands and facts run here, in a shell, on real files (as root, as CI runs them)."""

import os
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from deploys import ship
from deploys.facts import FileState, TreeState


def fact(cls, **arguments):
    """What pyinfra hands the fact: stdout's lines; None (the fact's default) when there are none."""
    result = subprocess.run(["sh", "-c", cls().command(**arguments)], capture_output=True, text=True, check=True)
    lines = result.stdout.split("\n")[:-1]
    return cls().process(lines) if lines else None


def write(dest, content, mode="640", user="root", group="root", **options):
    for command in ship.write_commands(str(dest), mode, user, group, **options):
        subprocess.run(["sh", "-c", command], input=content, text=True, check=True, capture_output=True)


def test_a_written_file_reads_back_as_converged_and_a_change_of_content_mode_or_group_does_not(tmp_path):
    dest = tmp_path / "pg_hba.conf"
    old_umask = os.umask(0)  # whatever the umask, the file is never more open than its mode
    try:
        write(dest, "host all all 0.0.0.0/0 scram-sha-256\n", mode="640")
    finally:
        os.umask(old_umask)
    assert oct(dest.stat().st_mode & 0o777) == "0o640" and os.listdir(tmp_path) == ["pg_hba.conf"]
    wanted = ship.file_state("host all all 0.0.0.0/0 scram-sha-256\n", "0640", "root", "root")
    assert fact(FileState, path=str(dest)) == wanted
    assert fact(FileState, path=str(dest)) != ship.file_state("host all all 0.0.0.0/0 trust\n", "640", "root", "root")
    assert fact(FileState, path=str(dest)) != ship.file_state("host all all 0.0.0.0/0 scram-sha-256\n", "644", "root",
                                                             "root")
    assert fact(FileState, path=str(dest)) != ship.file_state("host all all 0.0.0.0/0 scram-sha-256\n", "640", "root",
                                                             "postgres")


def test_a_link_planted_at_the_destination_is_replaced_not_followed(tmp_path):
    target = tmp_path / "shadow"
    target.write_text("untouched\n")
    dest = tmp_path / "server.key"
    dest.symlink_to(target)
    assert fact(FileState, path=str(dest)) is None  # a link is never taken for the file
    write(dest, "secret\n", mode="600")
    assert not dest.is_symlink() and dest.read_text() == "secret\n" and target.read_text() == "untouched\n"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    dest = tmp_path / "pgbouncer.ini"
    dest.write_text("old\n")
    with pytest.raises(subprocess.CalledProcessError):
        write(dest, "new\n", user="no-such-user")
    assert dest.read_text() == "old\n" and os.listdir(tmp_path) == ["pgbouncer.ini"]


def test_the_directory_is_made_only_when_asked(tmp_path):
    with pytest.raises(subprocess.CalledProcessError):
        write(tmp_path / "absent" / "mcp-portal.conf", "[Service]\n")
    write(tmp_path / "absent" / "mcp-portal.conf", "[Service]\n", create_remote_dir=True)
    assert (tmp_path / "absent" / "mcp-portal.conf").read_text() == "[Service]\n"


def test_an_absent_file_reads_as_none(tmp_path):
    assert fact(FileState, path=str(tmp_path / "absent")) is None


def shipped(src, dest):
    """`src` as files.sync leaves it: root's, directories 755 and files 644."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for root, directories, names in os.walk(dest):
        os.chmod(root, 0o755)
        for name in names:
            os.chmod(os.path.join(root, name), 0o644)


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src"
    (src / "deploy").mkdir(parents=True)
    (src / "deploy" / "users.sql").write_text("create table users ();\n")
    (src / "sqitch.plan").write_text("%project=mcp_portal\nusers\n")
    return src


def test_a_shipped_tree_reads_as_converged_whatever_its_excluded_names_hold(source, tmp_path):
    dest = tmp_path / "dest"
    shipped(source, dest)
    (dest / "deploy" / "__pycache__").mkdir()
    (dest / "deploy" / "__pycache__" / "users.cpython-313.pyc").write_bytes(b"\0")
    (dest / "stale.pyc").write_bytes(b"\0")
    excluded = ("*.pyc", "__pycache__")
    assert fact(TreeState, path=str(dest), excluded=excluded) == ship.tree_state(source, "644", "755", excluded)
    assert fact(TreeState, path=str(dest), excluded=excluded)["deploy/users.sql"][0] == "f"


@pytest.mark.parametrize("drift", ["edited", "extra file", "missing file", "file mode", "directory mode", "owner"])
def test_any_drift_of_a_shipped_tree_reads_as_not_converged(source, tmp_path, drift):
    dest = tmp_path / "dest"
    shipped(source, dest)
    {
        "edited": lambda: (dest / "deploy" / "users.sql").write_text("drop table users;\n"),
        "extra file": lambda: (dest / "deploy" / "extra.sql").write_text(""),
        "missing file": lambda: (dest / "sqitch.plan").unlink(),
        "file mode": lambda: os.chmod(dest / "sqitch.plan", 0o666),
        "directory mode": lambda: os.chmod(dest / "deploy", 0o777),
        "owner": lambda: os.chown(dest / "sqitch.plan", 65534, 65534),
    }[drift]()
    assert fact(TreeState, path=str(dest)) != ship.tree_state(source, "644", "755", ())


def test_an_absent_tree_reads_as_none(tmp_path):
    assert fact(TreeState, path=str(tmp_path / "absent")) is None


def test_a_file_the_run_changes_before_it_is_written_whatever_the_plan_read(monkeypatch):
    converged = ship.file_state("local all postgres peer\n", "640", "postgres", "postgres")
    monkeypatch.setattr(ship, "host", SimpleNamespace(get_fact=lambda fact, path: converged))
    planned = []
    monkeypatch.setattr(ship, "_written", lambda **arguments: planned.append(arguments["converged"]))
    for rewrite in (False, True):
        ship.file("pg_hba.conf", "local all postgres peer\n", "/etc/postgresql/17/main/pg_hba.conf", "640",
                  user="postgres", group="postgres", rewrite=rewrite)
    assert planned == [True, False]
