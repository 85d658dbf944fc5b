"""/etc/hosts blocks and the ssh client files."""

import pytest

from fleet.access import HOSTS_BEGIN, HOSTS_END, Access, host_etc_hosts, hosts_block, replace_block, update_machine_hosts
from fleet.errors import FleetError
from fleet.topology import load

MACHINE_HOSTS = "127.0.0.1 localhost\n127.0.0.1 vm\n"


def test_block_is_added_once_replaced_and_removed_leaving_the_rest(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(MACHINE_HOSTS)
    block = hosts_block(load())
    update_machine_hosts(block, path)
    update_machine_hosts(block, path)
    text = path.read_text()
    assert text.startswith(MACHINE_HOSTS) and text.count(HOSTS_BEGIN) == 1 and "198.51.100.11\tpg-1" in text
    update_machine_hosts("", path)
    assert path.read_text() == MACHINE_HOSTS


def test_replace_block_keeps_lines_after_the_block():
    text = f"a\n{HOSTS_BEGIN}\nold\n{HOSTS_END}\nb\n"
    assert replace_block(text, "") == "a\nb\n"


def test_every_host_knows_every_name_including_its_own():
    text = host_etc_hosts(load())
    for name in ("pg-1", "pg-2", "pg-3", "pgbouncer-1", "s3", "fleet-gateway"):
        assert f"\t{name}\n" in text
    assert text.startswith("127.0.0.1\tlocalhost\n")


def test_client_files_pin_host_keys_and_use_only_our_key(layout):
    access = Access(layout)
    layout.local.mkdir(parents=True)
    access.write_client_files(load(), {"pg-1": ["ssh-ed25519", "AAAAkey"]})
    assert access.known_hosts.read_text() == "pg-1,198.51.100.11 ssh-ed25519 AAAAkey\n"
    config = access.config.read_text()
    assert "StrictHostKeyChecking yes" in config and f"IdentityFile {access.key}" in config and "IdentitiesOnly yes" in config
    assert "Host pg-1\n  HostName 198.51.100.11\n" in config


class ScriptedAccess(Access):
    """Access whose remote commands answer from a script, recording what was run."""

    def __init__(self, layout, answers):
        super().__init__(layout)
        self.answers_by_prefix, self.ran = answers, []

    def run(self, host_name, command, timeout=60, check=True, input_text=None):
        self.ran.append(command)
        out = next((text for prefix, text in self.answers_by_prefix.items() if command.startswith(prefix)), "")
        return type("Result", (), {"stdout": out})()


def test_a_host_that_boots_degraded_is_one_line_naming_the_failed_unit(layout):
    access = ScriptedAccess(layout, {
        "systemctl is-system-running": "degraded\n",
        "systemctl --failed": "systemd-user-sessions.service loaded failed failed Permit User Sessions\n",
        "journalctl": "Failed to spawn executor: No such file or directory\n",
    })
    access.answers = lambda host_name, timeout=None: True
    with pytest.raises(FleetError) as refused:
        access.wait_booted("pg-1")
    assert str(refused.value).startswith("host pg-1 booted 'degraded': systemd-user-sessions.service failed "
                                         "(Failed to spawn executor")
    assert not any("systemctl start" in command for command in access.ran)  # reported, never retried
