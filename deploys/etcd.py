"""etcd, the consensus store Patroni keeps the leader lock in: Debian's etcd-server on each member (the database
hosts, unless an inventory group `etcd` names others), peer and client TLS with certificates from the tier's CA, and
client certificates required: only holders of one the tier's CA issued (its hosts) get in.

The configuration and the etcd user exist before the package is installed: its postinst starts etcd at once, and a
member started with Debian's defaults would make a cluster of its own."""

from shlex import quote

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.api.exceptions import DeployError
from pyinfra.facts.files import Directory
from pyinfra.operations import server, systemd

from deploys import ship, tls
from deploys.datasource import address_of
from deploys.knobs import knobs
from deploys.packages import install
from hostside import layout

TLS_DIR = layout.config("etcd-tls")  # the host's certificate, readable by etcd
DATA_DIR = "/var/lib/etcd/mcp-portal"


def members():
    """The etcd members: the inventory's etcd group, else its database hosts."""
    return inventory.get_group("etcd", []) or inventory.get_group("database", [])


def client_endpoints():
    """host:port of every member's client listener (Patroni's etcd3 hosts)."""
    return [f"{address_of(m)}:{knobs(m).etcd_client_port}" for m in members()]


def membership_problem():
    """Why the etcd membership cannot run, or None: fewer members than etcd_minimum_members."""
    found, wanted = len(members()), knobs().etcd_minimum_members
    if found < wanted:
        return (f"etcd has {found} member(s) ({', '.join(m.name for m in members())}), fewer than "
                f"etcd_minimum_members {wanted}: losing one would stop every failover and write; add hosts to the "
                "inventory's etcd group (docs/inventories.md)")
    return None


@deploy("etcd")
def etcd_member():
    k = knobs()
    problem = membership_problem()
    if problem:
        raise DeployError(f"{host.name}: {problem}")
    address = address_of(host)
    peers = ",".join(f"{m.name}=https://{address_of(m)}:{knobs(m).etcd_peer_port}" for m in members())
    server.group(name="etcd's group", group="etcd", system=True)
    server.user(name="etcd's user", user="etcd", group="etcd", system=True, home="/var/lib/etcd",
                shell="/usr/sbin/nologin", create_home=False)
    certificates = tls.certificates(owner="etcd", remote=TLS_DIR)
    environment = {
        "ETCD_NAME": host.name,
        "ETCD_DATA_DIR": DATA_DIR,
        "ETCD_LISTEN_PEER_URLS": f"https://{address}:{k.etcd_peer_port}",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": f"https://{address}:{k.etcd_peer_port}",
        "ETCD_LISTEN_CLIENT_URLS": f"https://{address}:{k.etcd_client_port}",  # where its certificate is valid
        "ETCD_ADVERTISE_CLIENT_URLS": f"https://{address}:{k.etcd_client_port}",
        "ETCD_INITIAL_CLUSTER": peers,
        "ETCD_INITIAL_CLUSTER_STATE": "new",  # read on a member's first start only
        "ETCD_INITIAL_CLUSTER_TOKEN": f"{k.patroni_scope}-etcd",
        "ETCD_HEARTBEAT_INTERVAL": str(k.etcd_heartbeat_interval_ms),
        "ETCD_ELECTION_TIMEOUT": str(k.etcd_election_timeout_ms),
        "ETCD_CERT_FILE": f"{TLS_DIR}/server.crt", "ETCD_KEY_FILE": f"{TLS_DIR}/server.key",
        "ETCD_TRUSTED_CA_FILE": f"{TLS_DIR}/ca.crt", "ETCD_CLIENT_CERT_AUTH": "true",
        "ETCD_PEER_CERT_FILE": f"{TLS_DIR}/server.crt", "ETCD_PEER_KEY_FILE": f"{TLS_DIR}/server.key",
        "ETCD_PEER_TRUSTED_CA_FILE": f"{TLS_DIR}/ca.crt", "ETCD_PEER_CLIENT_CERT_AUTH": "true",
    }
    config = ship.template("etcd's configuration (/etc/default/etcd)", "templates/etcd.default.j2", "/etc/default/etcd",
                           "644", environment=environment)
    install("Install etcd", packages=["etcd-server", "etcd-client"], no_recommends=True)
    data = {m.name: bool(m.get_fact(Directory, path=f"{DATA_DIR}/member")) for m in members()}
    if any(data.values()) and not data[host.name]:
        _replace_member(k, [m for m in members() if data[m.name]])
    # One member at a time: two restarting together would lose the quorum for a moment.
    systemd.service(name="etcd runs and starts at boot", service="etcd", running=True, enabled=True,
                    restarted=config.will_change or any(op.will_change for op in certificates.values()), _serial=True)


def etcd_client(reached):
    """etcdctl with this host's client certificate, reaching the members `reached`."""
    endpoints = ",".join(f"https://{address_of(m)}:{knobs(m).etcd_client_port}" for m in reached)
    return (f"ETCDCTL_API=3 etcdctl --endpoints={endpoints} --cacert={TLS_DIR}/ca.crt --cert={TLS_DIR}/server.crt "
            f"--key={TLS_DIR}/server.key")


def _replace_member(k, keeping):
    """This member's data is gone (a rebuilt host) while the others keep the cluster: it leaves the membership and
    joins again as a new member, starting from the others' data (ETCD_INITIAL_CLUSTER_STATE=existing, for this first
    start only: a runtime drop-in that is gone at the next boot)."""
    peer = f"https://{address_of(host)}:{k.etcd_peer_port}"
    etcdctl = etcd_client(keeping)
    name = quote(host.name)
    server.shell(name="Replace this etcd member (its data is gone; the other members keep the cluster)", commands=[
        f"systemctl stop etcd && rm -rf {DATA_DIR}",
        f"for id in $({etcdctl} member list | awk -F', ' -v n={name} '$3 == n {{print $1}}'); do "
        f"{etcdctl} member remove $id; done",
        f"{etcdctl} member add {name} --peer-urls={peer}",
        "mkdir -p /run/systemd/system/etcd.service.d && printf '[Service]\\nEnvironmentFile=/run/mcp-etcd-join.env\\n' "
        "> /run/systemd/system/etcd.service.d/mcp-join.conf && echo ETCD_INITIAL_CLUSTER_STATE=existing > /run/mcp-etcd-join.env",
        "systemctl daemon-reload && systemctl start etcd",
        # Done when every member answers again (the new one has caught up with the others' data).
        f"timeout 120 sh -c 'until {etcdctl} endpoint health --cluster >/dev/null 2>&1; do sleep 1; done'",
    ])
