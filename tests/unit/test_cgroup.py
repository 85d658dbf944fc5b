"""Each fleet host's cgroup subtree: which hierarchies nspawn uses, and the refusals on a layout it cannot use."""

import pytest

from fleet.cgroup import HostCgroup, hierarchies
from fleet.errors import FleetError

# /proc/self/mountinfo on these machines (no systemd as PID 1): a hybrid layout.
HYBRID = """31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = "31 23 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate\n"


def test_a_hybrid_machine_uses_cgroup2_and_systemds_named_hierarchy():
    assert [str(p) for p in hierarchies(HYBRID)] == ["/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"]


def test_a_pure_cgroup2_machine_uses_cgroup2_alone():
    assert [str(p) for p in hierarchies(UNIFIED)] == ["/sys/fs/cgroup"]


@pytest.mark.parametrize("mountinfo, missing", [
    (HYBRID.replace("cgroup2 cgroup2", "tmpfs tmpfs"), "no writable cgroup2 hierarchy is mounted"),
    (HYBRID.replace("0:38 / /sys/fs/cgroup/unified rw,", "0:38 / /sys/fs/cgroup/unified ro,"), "no writable cgroup2"),
    (HYBRID.replace("name=systemd", "name=other"), "systemd's named hierarchy is not mounted writable"),
])
def test_a_layout_it_cannot_use_is_one_line_naming_what_is_missing(mountinfo, missing):
    with pytest.raises(FleetError) as refused:
        hierarchies(mountinfo)
    assert missing in str(refused.value) and "\n" not in str(refused.value)


def test_a_hosts_subtree_is_made_in_every_hierarchy_and_removed_bottom_up(tmp_path):
    roots = (tmp_path / "unified", tmp_path / "systemd")
    cgroup = HostCgroup("pg-1", roots)
    cgroup.create()
    assert [p.relative_to(tmp_path).as_posix() for p in cgroup.paths] == ["unified/mcp-fleet/pg-1", "systemd/mcp-fleet/pg-1"]
    (cgroup.paths[0] / "payload" / "init.scope").mkdir(parents=True)  # what nspawn and the host's systemd make
    HostCgroup("pg-2", roots).create()
    cgroup.remove()
    assert not (tmp_path / "unified" / "mcp-fleet" / "pg-1").exists()
    assert (tmp_path / "unified" / "mcp-fleet" / "pg-2").exists()  # another host's subtree stays, and its parent
    HostCgroup("pg-2", roots).remove()
    assert not (tmp_path / "unified" / "mcp-fleet").exists() and not (tmp_path / "systemd" / "mcp-fleet").exists()
