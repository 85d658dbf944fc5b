"""The tenant module's build decision and command, without a host: rebuilt when, and only when, its sources'
contents change; files put in place by rename, the stamp last; the build tools there only while it builds."""

import shutil

from deploys.tenant_module import BUILD_PACKAGES, SOURCES, build_command, headers_package, source_digest, stamp_path
from hostside.layout import Cluster

PG = Cluster(17, "main")


def test_the_digest_follows_the_sources_contents_and_names_not_their_times(tmp_path):
    copy = tmp_path / "portal_tenant"
    shutil.copytree(SOURCES, copy)
    assert source_digest(copy) == source_digest()
    (copy / "Makefile").touch()
    assert source_digest(copy) == source_digest()
    code = copy / "portal_tenant.c"
    code.write_text(code.read_text() + "\n")
    changed = source_digest(copy)
    assert changed != source_digest()
    code.rename(copy / "other.c")
    assert source_digest(copy) not in (changed, source_digest())


def test_the_build_runs_in_a_fresh_directory_and_replaces_each_file_by_rename_then_writes_the_stamp():
    command = build_command(PG, "d" * 64)
    assert command.startswith("set -e; export DEBIAN_FRONTEND=noninteractive; work=$(mktemp -d); ")
    assert "PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config" in command
    placed = ["/usr/lib/postgresql/17/lib/portal_tenant.so", "/usr/share/postgresql/17/extension/portal_tenant.control",
              "/usr/share/postgresql/17/extension/portal_tenant--1.0.sql", stamp_path(PG)]
    moves = [command.index(f" {path}") for path in placed]  # each the target of an `mv -f <dir>/.<name>.new`
    assert moves == sorted(moves) and all(f".{path.rsplit('/', 1)[1]}.new {path}" in command for path in placed)
    assert command.count("install -m 755") == 1 and command.count("install -m 644") == 2
    assert "&&" not in command and "||" not in command  # set -e stops at no failure inside such a list


def test_the_build_tools_are_installed_by_the_build_and_what_it_installed_is_purged_on_any_exit():
    command = build_command(PG, "d" * 64)
    tools = " ".join(BUILD_PACKAGES)
    assert f"apt-get update -qq; apt-get install -y -qq --no-install-recommends {tools} " in command
    before, trap = command.index("> $work/before;"), command.index("trap '")
    assert before < trap < command.index("apt-get install")
    assert "comm -13 $work/before $work/after | xargs -r apt-get purge" in command[trap:command.index("' EXIT;")]


def test_the_server_headers_are_unpacked_into_the_build_directory_never_installed():
    command = build_command(PG, "d" * 64)
    installs = [part for part in command.split(";") if "apt-get install" in part]
    assert len(installs) == 1 and headers_package(17) not in installs[0]
    assert f"apt-get download -qq -o APT::Sandbox::User=root {headers_package(17)})" in command
    assert f"dpkg-deb -x $work/{headers_package(17)}_*.deb $work/headers;" in command
    assert "includedir_server=$work/headers/usr/include/postgresql/17/server" in command
