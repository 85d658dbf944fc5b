"""The tenant module's build on a host (deploys/tenant_module.py), where it fails: the installed module, its stamp,
the host's packages and mktemp's directories are left as they were. The build that succeeds is the deploy's
(tests/infra)."""

from deploys.tenant_module import REMOTE_SOURCES, build_command, stamp_path
from tests.fleet_helpers import DATABASE, on

HOST = DATABASE[-1]
STATE = ("sha256sum /usr/lib/postgresql/17/lib/portal_tenant.so /usr/share/postgresql/17/extension/portal_tenant* "
         f"{stamp_path(17)}; ls -a /usr/lib/postgresql/17/lib /usr/share/postgresql/17/extension; ls -d /tmp/tmp.*; "
         "dpkg-query -W | cut -f1 | sort")


def test_a_build_that_fails_changes_nothing_and_purges_the_compiler_it_installed():
    before = on(HOST, STATE).stdout
    broken = "/root/portal_tenant.broken"
    on(HOST, f"rm -rf {broken} && cp -r {REMOTE_SOURCES} {broken} && echo 'not C' >> {broken}/portal_tenant.c")
    try:
        result = on(HOST, build_command(17, "0" * 64, sources=broken), check=False, timeout=600)
    finally:
        on(HOST, f"rm -rf {broken}")
    assert result.returncode != 0 and "portal_tenant.c" in result.stderr, result.stderr[-2000:]
    assert on(HOST, STATE).stdout == before
