"""HAProxy beside PgBouncer on each PgBouncer host: PgBouncer's entries connect to HAProxy on loopback, and HAProxy
sends them to what each member's Patroni says it is: the leader (read-write), or a replica within its purpose's
lag (read-only; the leader when there is none). A failover moves them within HAProxy's checks, with no deploy; a
member taken out has its connections closed, so PgBouncer reconnects to the new leader. TLS to PostgreSQL passes
through HAProxy untouched (PgBouncer verifies it)."""

from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from deploys import tls
from deploys.datasource import address_of
from deploys.knobs import knobs
from deploys.patroni import database_hosts
from deploys.replication import lag_threshold_mb

CA_FILE = "/etc/haproxy/mcp-portal-ca.crt"


def endpoints():
    """(read-write, read-only) as PgBouncer reaches them: HAProxy's listeners on this host."""
    k = knobs()
    return ("127.0.0.1", k.haproxy_primary_port), ("127.0.0.1", k.haproxy_replica_port)


@deploy("HAProxy (routing to Patroni's leader and replicas)")
def router():
    k = knobs()
    ca = tls.local_files()[0]
    ca_file = files.put(name="The tier's CA, for HAProxy's checks of Patroni's REST API", src=str(ca), dest=CA_FILE,
                        mode="644", create_remote_dir=True)
    members = [{"name": m.name, "address": knobs(m).postgres_listen_address or address_of(m),
                "port": knobs(m).postgres_port, "restapi_port": knobs(m).patroni_restapi_port,
                "lag_bytes": lag_threshold_mb(m.name) * 2**20} for m in database_hosts()]
    config = files.template(
        name="HAProxy's configuration", src="templates/haproxy.cfg.j2", dest="/etc/haproxy/haproxy.cfg", mode="644",
        members=members, ca_file=CA_FILE, primary_port=k.haproxy_primary_port, replica_port=k.haproxy_replica_port,
        inter_ms=k.haproxy_check_interval_ms, fall=k.haproxy_check_fall, rise=k.haproxy_check_rise,
        check_timeout_ms=min(k.haproxy_check_interval_ms, 2000), create_remote_dir=True,
    )
    apt.packages(name="Install HAProxy (and socat, for its runtime API)", packages=["haproxy", "socat"],
                 no_recommends=True, update=True, cache_time=3600)
    systemd.service(name="HAProxy runs and starts at boot", service="haproxy", running=True, enabled=True,
                    reloaded=config.will_change or ca_file.will_change)
