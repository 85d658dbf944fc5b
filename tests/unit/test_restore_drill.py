"""The drill's command line; the drill itself runs on the fleet (tests/e2e/test_backups.py)."""

import pytest

from hostside import restore_drill


def test_scratch_and_port_are_required(capsys):
    with pytest.raises(SystemExit) as exited:
        restore_drill.main(["restore_drill.py", "--port", "5434"])
    assert exited.value.code == 2 and "--scratch" in capsys.readouterr().err
