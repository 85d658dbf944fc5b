"""Starting a restored cluster's unit, against a stand-in systemctl: a start that fails fails, a slow start that
succeeds is waited for, and a start left waiting for a PID file that will never come (Debian's unit once the server
exited while it started) is cancelled and fails within seconds instead of hanging."""

import subprocess
import time

import pytest

from deploys.backups import start_or_give_up

UNIT = "postgresql@17-restore"

# The stand-in: `start` waits `START_S` seconds and exits `START_RC`, or, with START_RC=hang, waits until `stop`;
# `show -P` answers from the environment; every call is logged.
SYSTEMCTL = """#!/bin/sh
echo "$*" >> "$LOG"
case "$1" in
  start)
    if [ "$START_RC" = hang ]; then
      while [ ! -e "$STOPPED" ]; do sleep 0.1; done
      echo "Job for $2 canceled." >&2; exit 1
    fi
    sleep "$START_S"; exit "$START_RC" ;;
  stop) touch "$STOPPED" ;;
  show)
    case "$3" in
      ActiveState) echo "$ACTIVE_STATE" ;;
      ControlPID) echo "$CONTROL_PID" ;;
      MainPID) echo 0 ;;
    esac ;;
esac
"""


def start(tmp_path, start_rc, start_s=0, active_state="activating", control_pid=0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(SYSTEMCTL)
    (bin_dir / "systemctl").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(tmp_path / "calls"), "STOPPED": str(tmp_path / "stopped"),
           "START_RC": str(start_rc), "START_S": str(start_s), "ACTIVE_STATE": active_state,
           "CONTROL_PID": str(control_pid)}
    began = time.monotonic()
    result = subprocess.run(["sh", "-c", start_or_give_up(UNIT, settle_s=2)], env=env, capture_output=True, text=True,
                            timeout=60)
    calls = (tmp_path / "calls").read_text().splitlines()
    return result.returncode, time.monotonic() - began, calls


def test_a_start_waiting_for_a_pid_file_that_never_comes_is_cancelled_and_fails(tmp_path):
    rc, took, calls = start(tmp_path, "hang")
    assert rc != 0
    assert f"stop {UNIT}" in calls
    assert took < 15


@pytest.mark.parametrize("start_rc", [0, 1])
def test_a_start_that_ends_is_waited_for_and_its_result_kept(tmp_path, start_rc):
    """A start process still running (ControlPID set) is a start under way, however long: never cancelled."""
    rc, took, calls = start(tmp_path, start_rc, start_s=4, control_pid=4242)
    assert rc == start_rc
    assert took >= 4
    assert f"stop {UNIT}" not in calls


def test_a_unit_not_yet_activating_is_not_taken_for_a_stuck_one(tmp_path):
    rc, _, calls = start(tmp_path, 0, start_s=4, active_state="inactive")
    assert rc == 0
    assert f"stop {UNIT}" not in calls
