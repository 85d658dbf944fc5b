"""The local fleet, checked from outside: ssh, systemd, names, isolation, the apt proxy and the S3/KMS endpoint.

Tests run in file order: read-only checks first, then drills that power off, cut, reset and kill hosts.
"""

import json
import os
import re
import shlex
import socket
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

from fleet.aptproxy import AptProxy
from fleet.layout import Layout
from fleet.network import mirror_addresses
from fleet.s3endpoint import client
from tests.fleet_helpers import ACCESS, TOPOLOGY, fleet, nspawn_pids, on

HOSTS = [h.name for h in TOPOLOGY.hosts]


@pytest.mark.parametrize("host", HOSTS)
def test_host_is_booted_with_systemd_and_answers_ssh(fleet_up, host):
    assert on(host, "systemctl is-system-running").stdout.strip() == "running"
    assert on(host, "hostname").stdout.strip() == host
    assert on(host, "cat /etc/debian_version").stdout.startswith("13.")


def test_every_name_resolves_on_every_host_and_here(fleet_up):
    for host in HOSTS:
        lines = on(host, "getent hosts " + " ".join(HOSTS)).stdout.splitlines()
        assert {line.split()[1]: line.split()[0] for line in lines} == {h.name: str(h.address) for h in TOPOLOGY.hosts}
    assert socket.gethostbyname("pg-3") == str(TOPOLOGY.host("pg-3").address)


def test_hosts_do_not_share_files(fleet_up):
    on("pg-1", "echo only-here > /root/isolation-probe")
    for host in HOSTS[1:]:
        assert on(host, "test -e /root/isolation-probe", check=False).returncode == 1
    machine_ids = {on(h, "cat /etc/machine-id").stdout for h in HOSTS}
    assert len(machine_ids) == len(HOSTS)


def test_host_keys_are_per_host_and_pinned(fleet_up):
    known = ACCESS.known_hosts.read_text().splitlines()
    assert len({line.split()[2] for line in known}) == len(HOSTS)


def test_hosts_reach_only_the_fleet_subnet(fleet_up):
    """No default route: the apt proxy on the bridge is the only way out."""
    assert on("pg-1", "ip -4 route show").stdout.strip().splitlines() == [
        f"{TOPOLOGY.subnet} dev eth0 proto kernel scope link src {TOPOLOGY.host('pg-1').address}"
    ]
    mirror = mirror_addresses(TOPOLOGY.mirror)[0]
    probe = f"python3 -c \"import socket; socket.create_connection(('{mirror}', 80), timeout=3)\""
    assert "Network is unreachable" in on("pg-1", probe, check=False).stderr


def test_packages_install_through_the_caching_proxy_and_are_fetched_once(fleet_up):
    """The proxy's log has an I line per upstream download and an O line per delivery to a host."""
    log = AptProxy(Layout(), TOPOLOGY).log

    def count(direction):
        return sum(1 for line in log.read_text().splitlines() if f"|{direction}|" in line and "/hello_" in line)

    for host in ("pg-2", "pg-3"):  # a fleet left up by an earlier run may have it already
        on(host, "apt-get purge -y -qq hello >/dev/null; apt-get clean; rm -f /tmp/hello_*.deb")
    upstream, delivered = count("I"), count("O")
    on("pg-2", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hello", timeout=300)
    assert on("pg-2", "hello").stdout.strip() == "Hello, world!"
    assert count("O") == delivered + 1, "the package did not come through the proxy"
    assert count("I") <= upstream + 1
    upstream = count("I")
    on("pg-3", "apt-get update -qq && cd /tmp && apt-get download -qq hello", timeout=300)
    assert count("O") == delivered + 2
    assert count("I") == upstream, "the second host's download went upstream instead of the cache"


# -- the S3/KMS endpoint ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_credentials(fleet_up):
    credentials = json.loads((Layout().local / "s3.json").read_text())
    assert oct((Layout().local / "s3.json").stat().st_mode & 0o777) == "0o600"
    return credentials


def test_s3_bucket_put_and_refused_conditional_put(s3_credentials):
    s3 = client("s3", s3_credentials)
    s3.create_bucket(Bucket="fleet-probe")
    s3.put_object(Bucket="fleet-probe", Key="segment", Body=b"first")
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        s3.put_object(Bucket="fleet-probe", Key="segment", Body=b"second", IfNoneMatch="*")
    assert refused.value.response["Error"]["Code"] == "PreconditionFailed"
    assert s3.get_object(Bucket="fleet-probe", Key="segment")["Body"].read() == b"first"


def test_signatures_cover_the_request_as_sent(s3_credentials):
    """fleet/moto_server.py: stock moto refuses a signed listing whose prefix or page marker holds a '/' (so every
    listing's second page: the tier's past 1000 versions), and a key with a space."""
    s3 = client("s3", s3_credentials)
    s3.create_bucket(Bucket="fleet-signatures")
    for name in ("a folder/an object", "a folder/another"):
        s3.put_object(Bucket="fleet-signatures", Key=name, Body=b"x")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="fleet-signatures", Prefix="a folder/")["Contents"]] == [
        "a folder/an object", "a folder/another"]
    pages = s3.get_paginator("list_object_versions").paginate(Bucket="fleet-signatures", Prefix="a",
                                                              PaginationConfig={"PageSize": 1})
    assert [v["Key"] for page in pages for v in page.get("Versions", [])] == ["a folder/an object", "a folder/another"]
    assert s3.get_object(Bucket="fleet-signatures", Key="a folder/an object")["Body"].read() == b"x"
    wrong = client("s3", dict(s3_credentials, secret_access_key="not-the-secret"))
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        wrong.list_objects_v2(Bucket="fleet-signatures", Prefix="a folder/")
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_listing_versions_copies_no_objects_bytes(s3_credentials):
    """fleet/moto_server.py: stock moto writes a copy of every version to a new temporary file on each listing."""
    s3, size = client("s3", s3_credentials), (12 << 20) + 7  # over moto's 5 MiB in memory; a size nothing else has
    s3.create_bucket(Bucket="fleet-versions")
    s3.put_bucket_versioning(Bucket="fleet-versions", VersioningConfiguration={"Status": "Enabled"})
    bodies = [os.urandom(size), os.urandom(size)]
    for body in bodies:
        s3.put_object(Bucket="fleet-versions", Key="big", Body=body)
    count = ("import os, sys; fds = f'/proc/{sys.argv[1]}/fd'; print(sum(os.readlink(f'{fds}/{n}').endswith('(deleted)') "
             f"and os.stat(f'{{fds}}/{{n}}').st_size == {size} for n in os.listdir(fds)))")
    held = lambda: int(on("s3", f"python3 -c {shlex.quote(count)} $(systemctl show --property=MainPID --value moto)").stdout)
    assert held() == 2
    for _ in range(3):
        listed = s3.list_object_versions(Bucket="fleet-versions", Prefix="big")["Versions"]
    assert held() == 2
    assert [(v["Size"], v["IsLatest"]) for v in listed] == [(size, True), (size, False)]
    for version, body in zip(listed, reversed(bodies)):  # the listing left the stored bytes open and whole
        assert s3.get_object(Bucket="fleet-versions", Key="big", VersionId=version["VersionId"])["Body"].read() == body


def test_a_ranged_get_reads_only_its_range(s3_credentials):
    """fleet/moto_server.py: stock moto reads the whole object for each ranged GET (downloads go in 8 MiB ranges)."""
    s3, body = client("s3", s3_credentials), os.urandom(64 << 20)
    s3.create_bucket(Bucket="fleet-ranges")
    s3.put_object(Bucket="fleet-ranges", Key="big", Body=body)
    moto_io = "/proc/$(systemctl show --property=MainPID --value moto)/io"
    read = lambda: int(on("s3", f"grep ^rchar: {moto_io}").stdout.split()[1])
    before = read()
    for first in range(0, 64 << 20, 8 << 20):  # a download's ranges
        assert s3.get_object(Bucket="fleet-ranges", Key="big", Range=f"bytes={first}-{first + (1 << 20) - 1}")[
            "Body"].read() == body[first:first + (1 << 20)]
    assert read() - before < 16 << 20  # 8 MiB read for 8 ranges, and moto's own files; stock: 512 MiB
    for asked, expected in ((f"bytes={len(body) - 5}-", body[-5:]), (f"bytes=7-{len(body) + 9}", body[7:]),
                            ("bytes=-3", body[-3:]), ("bytes=9-8", body)):  # ends past the object, suffix, invalid
        assert s3.get_object(Bucket="fleet-ranges", Key="big", Range=asked)["Body"].read() == expected, asked
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        s3.get_object(Bucket="fleet-ranges", Key="big", Range=f"bytes={len(body)}-")
    assert refused.value.response["Error"]["Code"] == "InvalidRange"
    assert s3.get_object(Bucket="fleet-ranges", Key="big")["Body"].read() == body


@pytest.mark.parametrize("wrong", [{"secret_access_key": "not-the-secret"}, {"access_key_id": "AKIAUNKNOWNKEY000000"}])
def test_s3_refuses_wrong_keys(s3_credentials, wrong):
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        client("s3", dict(s3_credentials, **wrong)).list_buckets()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def tier_client(service, user, s3_credentials):
    keys = json.loads((Layout().local / "s3" / f"{user}.json").read_text())
    return client(service, dict(s3_credentials, **keys))


def test_the_tiers_bucket_is_versioned_and_locked_and_its_keys_are_private(s3_credentials):
    tier = json.loads((Layout().local / "s3" / "tier.json").read_text())
    assert client("s3", s3_credentials).get_bucket_versioning(Bucket=tier["bucket"])["Status"] == "Enabled"
    lock = client("s3", s3_credentials).get_object_lock_configuration(Bucket=tier["bucket"])["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    assert (lock["Rule"]["DefaultRetention"]["Mode"], lock["Rule"]["DefaultRetention"]["Days"]) == ("COMPLIANCE", 32)
    for name in ("tier", "wal-archiver", "backup-retention"):
        assert oct((Layout().local / "s3" / f"{name}.json").stat().st_mode & 0o777) == "0o600"


def test_the_archive_user_cannot_delete_and_the_retention_user_can(s3_credentials):
    bucket = json.loads((Layout().local / "s3" / "tier.json").read_text())["bucket"]
    archiver = tier_client("s3", "wal-archiver", s3_credentials)
    archiver.put_object(Bucket=bucket, Key="fleet-probe/object", Body=b"x")
    assert archiver.get_object(Bucket=bucket, Key="fleet-probe/object")["Body"].read() == b"x"
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        archiver.delete_object(Bucket=bucket, Key="fleet-probe/object")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    tier_client("s3", "backup-retention", s3_credentials).delete_object(Bucket=bucket, Key="fleet-probe/object")


def test_kms_serves_data_keys(s3_credentials):
    kms = client("kms", s3_credentials)
    key_id = kms.create_key(Description="fleet probe")["KeyMetadata"]["KeyId"]
    data_key = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    assert len(data_key["Plaintext"]) == 32
    assert kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"] == data_key["Plaintext"]


def test_database_hosts_reach_the_endpoint_by_name(fleet_up):
    probe = "python3 -c \"import socket; socket.create_connection(('s3', 9000), timeout=3)\""
    on("pg-1", probe)


# -- one cgroup subtree per host ---------------------------------------------------------------------------

STRESS_STARTS = 200  # per host; with one shared cgroup, 230 of 1,200 such starts failed (docs/fleet.md)
STRESS_UNIT = """[Unit]
StartLimitIntervalSec=0
[Service]
Type=oneshot
ExecStart=/bin/true
"""


def test_each_hosts_systemd_runs_in_a_cgroup_subtree_of_its_own(fleet_up):
    for host in HOSTS:
        cgroups = Path(f"/proc/{nspawn_child(host)}/cgroup").read_text().splitlines()
        assert f"0::/mcp-fleet/{host}/payload/init.scope" in cgroups
        named = [line for line in cgroups if ":name=systemd:" in line]  # a hybrid machine's, such as this one
        assert all(line.endswith(f":/mcp-fleet/{host}/payload/init.scope") for line in named)


def nspawn_child(host):
    """PID (in this machine's namespace) of the host's systemd: the child of its nspawn."""
    root = f"/var/lib/mcp-fleet/hosts/{host}/root"
    nspawn = next(pid for pid in nspawn_pids() if root in Path(f"/proc/{pid}/cmdline").read_text().split("\0"))
    return int(Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()[0])


def test_every_host_starting_the_same_unit_at_once_never_fails_to_spawn(fleet_up):
    """Five systemd instances starting a unit of the same name over and over, at the same moment: none may fail."""
    loop = (f"failed=0; for i in $(seq {STRESS_STARTS}); do systemctl start mcp-spawn-stress.service 2>/dev/null "
            "|| failed=$((failed+1)); done; echo $failed")
    for host in HOSTS:
        on(host, f"cat > /etc/systemd/system/mcp-spawn-stress.service <<'UNIT'\n{STRESS_UNIT}UNIT\nsystemctl daemon-reload")
    try:
        with ThreadPoolExecutor(len(HOSTS)) as pool:
            failed = dict(zip(HOSTS, pool.map(lambda h: int(on(h, loop, timeout=300).stdout), HOSTS)))
    finally:
        for host in HOSTS:
            on(host, "rm -f /etc/systemd/system/mcp-spawn-stress.service && systemctl daemon-reload")
    assert failed == {host: 0 for host in HOSTS}, f"starts that failed, of {STRESS_STARTS} per host"


# -- commands and drills -----------------------------------------------------------------------------------

def test_status_lists_every_host_running_and_reachable(fleet_up):
    out = fleet("status").stdout
    for host in TOPOLOGY.hosts:
        assert re.search(rf"^{host.name}\s+{host.address}\s+running\s+yes", out, re.M), out
    assert "fleet cut s3" in out  # the in-memory endpoint's warning


def test_up_again_changes_nothing(fleet_up):
    before = {h: on(h, "ps -o lstart= -p 1").stdout for h in HOSTS}
    assert "(0 booted)" in fleet("up").stdout
    assert {h: on(h, "ps -o lstart= -p 1").stdout for h in HOSTS} == before


def test_ssh_command_runs_on_the_host(fleet_up):
    assert fleet("ssh", "pgbouncer-1", "hostname").stdout.strip() == "pgbouncer-1"


def test_unknown_host_is_one_line(fleet_up):
    result = fleet("cut", "pg-9", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "unknown host 'pg-9'" in result.stderr


def test_cut_isolates_a_running_host_and_heal_reconnects_it(fleet_up):
    fleet("cut", "pg-3")
    try:
        assert not ACCESS.answers("pg-3", timeout=5)
        probe = "python3 -c \"import socket; socket.create_connection(('pg-3', 22), timeout=3)\""
        assert on("pg-1", probe, check=False).returncode != 0
        assert re.search(r"^pg-3\s+\S+\s+cut\s+no", fleet("status", check=False).stdout, re.M)
    finally:
        fleet("heal", "pg-3")
    assert on("pg-3", "systemctl is-system-running").stdout.strip() == "running"


def test_stop_powers_off_keeping_the_disk_and_start_boots_it(fleet_up):
    on("pg-3", "echo kept > /root/survives-power-off && sync")
    fleet("stop", "pg-3")
    assert re.search(r"^pg-3\s+\S+\s+stopped\s+no", fleet("status", check=False).stdout, re.M)
    assert not ACCESS.answers("pg-3", timeout=5)
    fleet("start", "pg-3")
    assert on("pg-3", "cat /root/survives-power-off").stdout.strip() == "kept"


def test_reset_returns_a_host_to_bare(fleet_up):
    on("pgbouncer-1", "echo gone > /root/reset-probe")
    fleet("reset", "pgbouncer-1")
    assert on("pgbouncer-1", "test -e /root/reset-probe", check=False).returncode == 1
    assert on("pgbouncer-1", "systemctl is-system-running").stdout.strip() == "running"


def test_up_makes_its_s3_user_while_database_hosts_ask_the_endpoint_for_wal(fleet_up):
    """As when a stopped fleet whose replicas run restore_command is taken over: their requests spend the fresh
    endpoint's unauthenticated window before the fleet's own calls. `up` retries with the other hosts cut off."""
    ask = ("while :; do (exec 3<>/dev/tcp/s3/9000 && printf 'GET /mcp-portal-archive/wal HTTP/1.0\\r\\nHost: s3\\r\\n\\r\\n' >&3 "
           "&& cat <&3 >/dev/null) 2>/dev/null; sleep 0.02; done")
    askers = ("pg-1", "pg-2")
    for host in askers:
        on(host, f"systemd-run --quiet --unit=ask-for-wal bash -c {shlex.quote(ask)}")
    try:
        on("s3", "systemctl restart moto")
        out = fleet("up").stdout
    finally:
        for host in askers:
            on(host, "systemctl stop ask-for-wal", check=False)
    assert "restarting it with the other hosts cut off" in out
    client("s3", json.loads((Layout().local / "s3.json").read_text())).list_buckets()
    test_database_hosts_reach_the_endpoint_by_name(fleet_up)


def test_up_recovers_after_every_process_was_killed(fleet_up):
    """As before a CI run: nspawn processes killed, namespaces, mounts, bridge and state left behind."""
    on("pg-1", "echo before-kill > /root/kill-probe && sync")
    for pid in nspawn_pids():
        os.kill(pid, 9)
    assert not fleet("status", check=False).returncode == 0
    out = fleet("up").stdout
    assert f"({len(HOSTS)} booted)" in out
    assert fleet("status").returncode == 0
    assert on("pg-1", "cat /root/kill-probe").stdout.strip() == "before-kill"
    # Fresh endpoint, fresh keys: the fleet re-created its S3 user.
    credentials = json.loads((Layout().local / "s3.json").read_text())
    client("s3", credentials).list_buckets()
