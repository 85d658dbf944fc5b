"""The tenant module's build on a host (deploys/tenant_module.py), where it fails: the installed module, its stamp,
the host's packages and mktemp's directories are left as they were. The build that succeeds is the deploy's
(tests/infra)."""

from deploys.tenant_module import REMOTE_SOURCES, build_command, stamp_path
from hostside.layout import Cluster
from tests.fleet_helpers import DATABASE, on

HOST = DATABASE[-1]
PG = Cluster(17, "main")
STATE = (f"sha256sum {PG.lib_directory}/portal_tenant.so {PG.extension_directory}/portal_tenant*; "
         f"ls -a {PG.lib_directory} {PG.extension_directory}; ls -d /tmp/tmp.*; dpkg-query -W | cut -f1 | sort")


def test_a_build_that_fails_changes_nothing_and_purges_the_compiler_it_installed():
    before = on(HOST, STATE).stdout
    broken = "/root/portal_tenant.broken"
    on(HOST, f"rm -rf {broken} && cp -r {REMOTE_SOURCES} {broken} && echo 'not C' >> {broken}/portal_tenant.c")
    try:
        result = on(HOST, build_command(PG, "0" * 64, sources=broken), check=False, timeout=600)
    finally:
        on(HOST, f"rm -rf {broken}")
    assert result.returncode != 0 and "portal_tenant.c" in result.stderr, result.stderr[-2000:]
    assert on(HOST, STATE).stdout == before
