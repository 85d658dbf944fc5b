"""pyinfra host lists for the local fleet, from the topology and the ssh files `fleet up` writes."""

import json

from fleet.access import Access
from fleet.layout import Layout
from fleet.topology import GROUPS, load


def pyinfra_groups(topology=None, layout=None):
    """{group: [(host, data), ...]} for every group; SystemExit with one line when the fleet is not up."""
    topology = topology or load()
    access = Access(layout or Layout())
    if not access.known_hosts.exists():
        raise SystemExit("inventory/local.py: the local fleet is not up (no .fleet/known_hosts); run `make local` or `fleet up` first")
    common = {
        "ssh_user": "root",
        "ssh_key": str(access.key),
        "ssh_known_hosts_file": str(access.known_hosts),
        "ssh_strict_host_key_checking": "yes",
    }
    return {
        group: [(h.name, dict(common, ssh_hostname=str(h.address))) for h in topology.group(group)]
        for group in GROUPS
    }


def s3_archive(layout=None):
    """The tier's bucket, endpoint and KMS key on the fleet's S3 endpoint ({} before `fleet up` made them)."""
    path = (layout or Layout()).local / "s3" / "tier.json"
    return json.loads(path.read_text()) if path.exists() else {}
