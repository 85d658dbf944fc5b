"""Every host of the tier: supported OS, booted cleanly, reachable, and carrying the roles the deploy gave it."""


def test_os_is_debian_13(target):
    assert target.host.system_info.distribution == "debian"
    assert target.host.system_info.release.startswith("13")


def test_systemd_reports_no_failed_unit(target):
    assert target.host.run("systemctl is-system-running").stdout.strip() == "running"


def test_ssh_is_running_and_enabled(target):
    ssh = target.host.service("ssh")
    assert ssh.is_running and ssh.is_enabled


def test_roles_file_matches_the_inventory(target):
    roles = target.host.file("/etc/mcp-portal/roles")
    assert roles.is_file and roles.user == "root" and roles.mode == 0o644
    recorded = dict(line.split("=", 1) for line in roles.content_string.splitlines() if not line.startswith("#"))
    assert recorded["host"] == target.name
    assert set(recorded["groups"].split(",")) == target.groups
