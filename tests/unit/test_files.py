import os

import pytest

from hostside import files


def test_the_file_is_replaced_whole_with_its_mode_whatever_the_umask(tmp_path):
    path = tmp_path / "leader.ini"
    path.write_text("old\n")
    old_umask = os.umask(0o077)
    try:
        files.replace(str(path), "new\n", 0o640)
    finally:
        os.umask(old_umask)
    assert path.read_text() == "new\n" and path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["leader.ini"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "leader.ini"
    path.write_text("old\n")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        files.replace(str(path), "new\n", 0o640)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["leader.ini"]
