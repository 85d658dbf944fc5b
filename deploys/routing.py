"""Routing on each PgBouncer host, following the leader with no deploy. HAProxy checks what each member's Patroni
says it is: the leader (/primary), or a replica within its purpose's lag. PgBouncer's read-write entries connect
straight to the leader HAProxy sees: mcp-follow-leader (hostside/follow_leader.py) rewrites them and reloads
PgBouncer when it moves, and sends them through HAProxy's leader listener while there is no single leader. The
read-only entry goes through HAProxy's replicas listener (the leader when no replica is within its lag), where a
member taken out has its connections closed. TLS to PostgreSQL passes through HAProxy untouched (PgBouncer
verifies it)."""

import json
import os

from pyinfra.api import deploy
from pyinfra.operations import systemd

from deploys import ship, tls
from deploys.datasource import address_of
from deploys.knobs import knobs
from deploys.packages import install
from deploys.patroni import database_hosts
from deploys.replication import lag_threshold_mb
from hostside import layout

CA_FILE = "/etc/haproxy/mcp-portal-ca.crt"
# A second statistics socket, read-only (level user) and for PgBouncer's user: what mcp-follow-leader reads.
STATS_SOCKET = "/run/haproxy/stats-pgbouncer.sock"
FOLLOWER = "mcp-follow-leader"
FOLLOW_INTERVAL_S = 0.2  # a look at HAProxy's statistics: a local socket read


def member_endpoint(member):
    """(address, port) of a database host's PostgreSQL, as PgBouncer and HAProxy reach it."""
    k = knobs(member)
    return k.postgres_listen_address or address_of(member), k.postgres_port


def endpoints():
    """(read-write, read-only) HAProxy listeners on this host: the leader's (PgBouncer's way there while there is no
    single leader) and the replicas'."""
    k = knobs()
    return ("127.0.0.1", k.haproxy_primary_port), ("127.0.0.1", k.haproxy_replica_port)


@deploy("PgBouncer's read-write entries follow the leader")
def leader_follower(entries, programs_changed):
    """mcp-follow-leader, running before PgBouncer starts: `entries` are [{name, dbname, options}]."""
    config = ship.file(
        "What mcp-follow-leader reads: HAProxy's statistics, the members, the entries", json.dumps({
            "haproxy_socket": STATS_SOCKET, "listener": "primary", "interval_s": FOLLOW_INTERVAL_S,
            "members": {m.name: member_endpoint(m) for m in database_hosts()}, "fallback": endpoints()[0],
            "entries": entries, "output": layout.LEADER_ENTRIES,
            "pgbouncer_pidfile": layout.PGBOUNCER_PIDFILE,
        }, indent=1, sort_keys=True) + "\n", layout.config("follow-leader.json"), "644", create_remote_dir=True)
    unit = ship.template(f"{FOLLOWER}'s unit", "templates/follow-leader.service.j2",
                         f"/etc/systemd/system/{FOLLOWER}.service", "644", program=layout.program("follow-leader"),
                         entries=layout.LEADER_ENTRIES,
                         state_directory=os.path.basename(os.path.dirname(layout.LEADER_ENTRIES)))
    if unit.will_change:
        systemd.daemon_reload(name="Reload systemd units")
    systemd.service(name=f"{FOLLOWER} runs and starts at boot", service=f"{FOLLOWER}.service", running=True, enabled=True,
                    restarted=programs_changed or config.will_change or unit.will_change)


@deploy("HAProxy (routing to Patroni's leader and replicas)")
def router():
    k = knobs()
    ca = tls.authorities()[tls.DATABASE_CA]
    ca_file = ship.copy("The database servers' CA, for HAProxy's checks of Patroni's REST API", ca, CA_FILE, "644",
                        create_remote_dir=True)
    members = [{"name": m.name, "address": member_endpoint(m)[0], "port": member_endpoint(m)[1],
                "restapi_port": knobs(m).patroni_restapi_port,
                "lag_bytes": lag_threshold_mb(m.name) * 2**20} for m in database_hosts()]
    config = ship.template(
        "HAProxy's configuration", "templates/haproxy.cfg.j2", "/etc/haproxy/haproxy.cfg", "644",
        members=members, ca_file=CA_FILE, stats_socket=STATS_SOCKET, primary_port=k.haproxy_primary_port, replica_port=k.haproxy_replica_port,
        inter_ms=k.haproxy_check_interval_ms, fall=k.haproxy_check_fall, rise=k.haproxy_check_rise,
        check_timeout_ms=min(k.haproxy_check_interval_ms, 2000), create_remote_dir=True,
    )
    install("Install HAProxy (and socat, for its runtime API)", packages=["haproxy", "socat"], no_recommends=True)
    systemd.service(name="HAProxy runs and starts at boot", service="haproxy", running=True, enabled=True,
                    reloaded=config.will_change or ca_file.will_change)
