"""The tenant module (extension/portal_tenant) on every database host: built from its sources against Debian's
server headers, installed into the server's library and extension directories, and rebuilt only when its sources
change (a stamp beside the control file holds their digest). The compiler is there only while it builds: what the
build installed it purges, failed or not. The headers are unpacked from postgresql-server-dev, not installed: the
package depends on clang and LLVM (about 800 MB) for JIT bitcode the module does not need. The migrations create
the extension (sql/deploy/tenant_module.sql); a backend loads the library on its first call."""

import hashlib
from pathlib import Path
from shlex import quote

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FileContents
from pyinfra.operations import server

from deploys import ship
from deploys.postgres import cluster

SOURCES = Path(__file__).resolve().parents[1] / "extension" / "portal_tenant"
REMOTE_SOURCES = "/usr/local/src/portal_tenant"
NAME = "portal_tenant"


def source_digest(directory=SOURCES):
    """One digest over the module's files, names and contents, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_command(pg, digest, sources=REMOTE_SOURCES):
    """Shell: install the compiler (from a refreshed index: a deploy refreshes it only to install what is missing,
    so it may be months old), unpack the server headers, build in a fresh root-only directory, put each file in
    place by rename (a backend that has the old library mapped never sees it rewritten), the stamp last; then purge
    the packages the build installed, whatever happened."""
    libdir, extdir = pg.lib_directory, pg.extension_directory
    place = "".join(f"install -m {mode} $work/src/{name} {target}/.{name}.new; "
                    f"mv -f {target}/.{name}.new {target}/{name}; "
                    for name, mode, target in ((f"{NAME}.so", 755, libdir), (f"{NAME}.control", 644, extdir),
                                               (f"{NAME}--1.0.sql", 644, extdir)))
    installed = "dpkg-query -W | cut -f1 | sort"
    headers = headers_package(pg.major)
    # Every step its own command, never `a && b`: set -e does not stop at a failure inside an && list, and the stamp
    # must never be written after a step that failed.
    return (f"set -e; export DEBIAN_FRONTEND=noninteractive; work=$(mktemp -d); {installed} > $work/before; "
            f"trap '{installed} > $work/after; comm -13 $work/before $work/after | xargs -r apt-get purge -y -qq "
            f">/dev/null; rm -rf $work' EXIT; "
            f"apt-get update -qq; "
            f"apt-get install -y -qq --no-install-recommends {' '.join(BUILD_PACKAGES)} >/dev/null; "
            # The download lands in root's private directory: apt's sandbox user could not write there.
            f"(cd $work; apt-get download -qq -o APT::Sandbox::User=root {headers}); "
            f"dpkg-deb -x $work/{headers}_*.deb $work/headers; "
            f"cp -r {quote(sources)}/. $work/src; "
            f"make -s -C $work/src PG_CONFIG={pg.bin('pg_config')} "
            f"includedir_server=$work/headers/usr/include/postgresql/{pg.major}/server >/dev/null; {place}"
            f"echo {quote(digest)} > {extdir}/.{NAME}.sources-sha256.new; "
            f"mv -f {extdir}/.{NAME}.sources-sha256.new {stamp_path(pg)}")


BUILD_PACKAGES = ["gcc", "make", "libc6-dev"]


def headers_package(major):
    """Debian's package of the server headers (unpacked by the build, never installed)."""
    return f"postgresql-server-dev-{major}"


def stamp_path(pg):
    return f"{pg.extension_directory}/{NAME}.sources-sha256"


@deploy("Tenant module")
def tenant_module():
    pg = cluster()
    ship.tree("The tenant module's sources", SOURCES, REMOTE_SOURCES)
    digest = source_digest()
    if host.get_fact(FileContents, path=stamp_path(pg)) != [digest]:
        server.shell(name="Build and install the tenant module (its sources changed)",
                     commands=[build_command(pg, digest)])
