"""Facts' parsing of command output (apt-cache policy's format as on the fleet, with an outdated package added)."""

from deploys.facts import AptVersions

APT_CACHE_POLICY = """postgresql-17:
  Installed: 17.11-0+deb13u1
  Candidate: 17.12-0+deb13u1
  Version table:
     17.12-0+deb13u1 500
        500 http://deb.debian.org/debian trixie/main amd64 Packages
 *** 17.11-0+deb13u1 100
postgresql-common:
  Installed: 278+deb13u1
  Candidate: 278+deb13u1
  Version table:
 *** 278+deb13u1 500
pgbouncer:
  Installed: (none)
  Candidate: 1.24.1-1
""".splitlines()


def test_apt_versions_reads_installed_and_candidate_per_package():
    assert AptVersions().process(APT_CACHE_POLICY) == {
        "postgresql-17": {"installed": "17.11-0+deb13u1", "candidate": "17.12-0+deb13u1"},
        "postgresql-common": {"installed": "278+deb13u1", "candidate": "278+deb13u1"},
        "pgbouncer": {"installed": "(none)", "candidate": "1.24.1-1"},
    }


def test_ungranted_functions_tell_a_stopped_cluster_from_a_granted_role():
    from deploys.facts import UngrantedFunctions
    fact = UngrantedFunctions()
    assert fact.default() is None  # no output: the cluster is not running
    assert fact.process(["checked"]) == []
    assert fact.process(["checked", "pg_catalog.pg_read_binary_file(text)"]) == ["pg_catalog.pg_read_binary_file(text)"]


def test_newest_backup_tells_none_from_an_archive_it_could_not_list():
    from deploys.facts import NewestBackup
    fact = NewestBackup()
    assert fact.process([]) is None  # no program or configuration yet: a first deploy
    assert fact.process(['{"finished_at": 1764600000.5, "id": "a"}', '{"finished_at": 1764603600.5, "id": "b"}']) \
        == 1764603600.5
    assert fact.process(["unreadable"]) == NewestBackup.UNREADABLE
