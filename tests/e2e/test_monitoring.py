"""The exporters on the fleet, scraped as Prometheus would (HTTPS against the tier's CA, basic auth): each answers
with the tier's series; an S3 outage moves the archive's metrics and, replayed through promtool, fires the alert;
a backup run updates its freshness metrics to what its record in S3 says."""

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from fleet.layout import Layout
from fleet.s3endpoint import client
from tests.e2e.test_backups import UNIT as BACKUP_UNIT
from tests.e2e.test_backups import records
from tests.e2e.test_wal_archive import PRIMARY, archiver, eventually, switch
from tests.fleet_helpers import fleet, on
from deploys.tls import issue, names_of
from tests.metrics import SECRETS, fetch, password, scrape, value

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_PORT = 19090
ALERTS = REPO / "monitoring" / "alerts.yml"
REPLICAS = ["pg-2", "pg-3"]
SLOTS = ["pg_2", "pg_3"]  # Patroni's slots on the leader, one per other member
DATABASE_HOSTS = [PRIMARY, *REPLICAS]
POOLERS = ["pgbouncer-1", "pgbouncer-2"]
ARCHIVE_ALERT = 'ALERTS{alertname="MCPWalArchiveFailing"'
POSTGRES_JOB = {"instance": PRIMARY, "job": "mcp-postgres", "server": "/var/run/postgresql:5432"}


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A real Prometheus (Debian's, on the control machine) with monitoring/prometheus.yml's jobs pointed at the
    fleet and monitoring/alerts.yml, scraping and evaluating every 5 s; returns a PromQL query function."""
    work = tmp_path_factory.mktemp("prometheus")
    (work / "password").write_text(password())
    config = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "5s", "evaluation_interval": "5s"}
    config["rule_files"] = [str(ALERTS)]
    hosts = {"mcp-node": [*DATABASE_HOSTS, *POOLERS], "mcp-postgres": DATABASE_HOSTS, "mcp-pgbouncer": POOLERS,
             "mcp-patroni": DATABASE_HOSTS, "mcp-etcd": DATABASE_HOSTS}
    # etcd admits holders of a certificate from the tier's CA only: one for this Prometheus, as an operator issues it.
    client_cert, client_key = issue(SECRETS / "tls", "prometheus", names_of("prometheus", "prometheus"), 30, 10)
    for job in config["scrape_configs"]:
        port = job["static_configs"][0]["targets"][0].rsplit(":", 1)[1]
        job["static_configs"] = [{"targets": [f"{host}:{port}" for host in hosts[job["job_name"]]]}]
        ca = Path(job["tls_config"]["ca_file"]).name.removeprefix("mcp-portal-")  # ca.crt or database-ca.crt
        job["tls_config"] = {**job["tls_config"], "ca_file": str(SECRETS / "tls" / ca)}
        if "cert_file" in job["tls_config"]:
            job["tls_config"].update(cert_file=str(client_cert), key_file=str(client_key))
        if "basic_auth" in job:
            job["basic_auth"]["password_file"] = str(work / "password")
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = subprocess.Popen(["prometheus", f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                               f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"],
                              stdout=subprocess.DEVNULL, stderr=open(work / "log", "w"))

    def query(promql):
        url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)["data"]["result"]
    try:
        eventually(lambda: server.poll() is None and len(ready(query)) == TARGETS, timeout=60,
                   what=f"Prometheus scraping all {TARGETS} targets")
        yield query
    finally:
        server.terminate()
        server.wait(timeout=30)


TARGETS = 16  # node 5, postgres 3, pgbouncer 2, patroni 3, etcd 3


def ready(query):
    try:
        return query("up == 1")
    except OSError:  # not listening yet
        return []


@pytest.fixture(scope="module")
def s3():
    return client("s3", json.loads((Layout().local / "s3.json").read_text()))


def test_every_host_exports_its_certificates_expiry_and_readable_tier_metrics():
    for host in [*DATABASE_HOSTS, *POOLERS]:
        node = scrape(host, "node")
        held = [host, f"{host}-exporter", *([f"{host}-postgres"] if host in DATABASE_HOSTS else [])]  # PostgreSQL's own
        expiries = [x509.load_pem_x509_certificate((SECRETS / "tls" / f"{name}.crt").read_bytes()).not_valid_after_utc
                    for name in held]
        assert value(node, "mcp_tls_certificate_not_after_timestamp_seconds") == int(min(expiries).timestamp())
        assert value(node, "node_textfile_scrape_error") == 0, host
        assert (value(node, "mcp_base_backup_max_age_seconds") == 26 * 3600) == (host in DATABASE_HOSTS)
        # Replication's thresholds (group_data/local.py: pg-1 and pg-2 realtime 10 MB, pg-3 reporting 100 MB)
        # on every database host, for whichever leads.
        slots = ["pg_1", *SLOTS]
        thresholds = {slot: value(node, "mcp_replication_lag_threshold_bytes", slot_name=slot) for slot in slots}
        assert thresholds == (dict(zip(slots, [10 * 2**20, 10 * 2**20, 100 * 2**20])) if host in DATABASE_HOSTS
                              else dict.fromkeys(slots))
        assert (value(node, "mcp_restore_drill_max_age_seconds") == 8 * 86400) == (host in DATABASE_HOSTS)
        assert value(node, "mcp_watchdog_required") == (0 if host in DATABASE_HOSTS else None)  # off on the fleet


def test_the_postgres_exporter_sees_each_servers_role_and_replication():
    for host in DATABASE_HOSTS:
        metrics = scrape(host, "postgres")
        assert value(metrics, "pg_up") == 1
        assert value(metrics, "pg_replication_is_replica") == (host in REPLICAS)
        assert value(metrics, "mcp_wal_receiver_streaming") == (host in REPLICAS)
        assert value(metrics, "mcp_archiver_ready_files") is not None
        assert value(metrics, "pg_database_wraparound_age_datfrozenxid_seconds", datname="portal") > 0
    primary = scrape(PRIMARY, "postgres")
    for slot in SLOTS:
        assert value(primary, "pg_replication_slot_slot_is_active", slot_name=slot) == 1
        assert 0 <= value(primary, "mcp_standby_replay_lag_bytes", slot_name=slot) < 10 * 2**20


def test_the_pgbouncer_exporter_reads_the_pools_through_the_stats_user():
    metrics = scrape("pgbouncer-1", "pgbouncer")
    assert value(metrics, "pgbouncer_up") == 1
    assert value(metrics, "pgbouncer_databases_max_connections", name="portal") == 30  # pgbouncer_pool
    assert value(metrics, "pgbouncer_pools_client_maxwait_seconds", database="portal", user="heartbeat") is not None


def test_scrapes_need_tls_and_the_password_and_reach_only_the_named_address():
    assert fetch(PRIMARY, "node", user=None)[0] == 401
    assert fetch(PRIMARY, "postgres", secret="wrong")[0] == 401
    plain = subprocess.run(["curl", "-s", f"http://{PRIMARY}:9100/metrics"], capture_output=True, text=True)
    assert "HTTP request to an HTTPS server" in plain.stdout
    listening = on(PRIMARY, "ss -Hltn").stdout
    for port in (9100, 9187):
        assert f"198.51.100.11:{port} " in listening and f"127.0.0.1:{port} " not in listening
        assert f"*:{port} " not in listening and f"0.0.0.0:{port} " not in listening
    assert on(PRIMARY, "stat -c '%U:%G %a' /etc/default/prometheus-postgres-exporter").stdout.split() == [
        "prometheus:prometheus", "640"]  # it holds the monitoring role's password


def test_prometheus_scrapes_every_exporter_and_evaluates_every_rule_on_the_fleets_data(prometheus):
    up = {(r["metric"]["job"], r["metric"]["instance"]) for r in prometheus("up == 1")}
    assert ("mcp-postgres", "pg-3") in up and ("mcp-pgbouncer", "pgbouncer-2") in up and len(up) == TARGETS
    assert {("mcp-patroni", h) for h in DATABASE_HOSTS} | {("mcp-etcd", h) for h in DATABASE_HOSTS} <= up
    # Patroni's and etcd's own series, as the HA alerts read them.
    assert [r["metric"]["instance"] for r in prometheus("patroni_primary == 1")] == [PRIMARY]
    assert len(prometheus("etcd_server_has_leader == 1")) == 3
    # The joins the rules rely on hold on real data: each standby's lag, seen on the primary, against its own threshold.
    joined = prometheus("mcp_standby_replay_lag_bytes - on(instance, slot_name) group_left() mcp_replication_lag_threshold_bytes")
    assert sorted((r["metric"]["instance"], r["metric"]["slot_name"]) for r in joined) == [(PRIMARY, s) for s in SLOTS]
    eventually(lambda: all(r.get("lastEvaluation", "").startswith("20") for r in rules()), timeout=30,
               what="every rule evaluated")
    declared = sum(len(group["rules"]) for group in yaml.safe_load(ALERTS.read_text())["groups"])
    assert len(rules()) == declared and [r for r in rules() if r["health"] != "ok"] == []
    firing = [r["metric"]["alertname"] for r in prometheus('ALERTS{alertstate="firing"}')]
    assert firing == [], f"a healthy fleet fires {firing}"


def rules():
    """The alert rules as the Prometheus fixture evaluates them: health, last evaluation."""
    with urllib.request.urlopen(f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/rules", timeout=10) as response:
        return [r for g in json.load(response)["data"]["groups"] for r in g["rules"]]


def archive_series():
    metrics = scrape(PRIMARY, "postgres")
    names = ("failed_count", "last_failed_timestamp_seconds", "last_archived_timestamp_seconds")
    return {name: value(metrics, f"mcp_archiver_{name}") for name in names}


def alert_fires(scrapes, minutes_held):
    """promtool's verdict on MCPWalArchiveFailing for these real scrapes, one a minute, the last one held."""
    rule = next(r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == "MCPWalArchiveFailing")
    held = scrapes + [scrapes[-1]] * minutes_held
    labels = ",".join(f'{key}="{label}"' for key, label in POSTGRES_JOB.items())
    series = [{"series": f"mcp_archiver_{name}{{{labels}}}", "values": " ".join(repr(s[name]) for s in held)}
              for name in scrapes[0]]
    expected = {"exp_labels": {**POSTGRES_JOB, "severity": "critical"},
                "exp_annotations": {k: v.replace("{{ $labels.instance }}", PRIMARY)
                                    for k, v in rule["annotations"].items()}}
    test = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [{"eval_time": f"{len(held) - 1}m", "alertname": "MCPWalArchiveFailing",
                             "exp_alerts": [expected]}]}]}
    path = Path("/tmp") / "mcp-archive-alert-test.yml"
    path.write_text(yaml.safe_dump(test))
    verdict = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True)
    return verdict.returncode == 0, verdict.stdout + verdict.stderr


def test_an_s3_outage_moves_the_archive_metrics_and_fires_the_alert(prometheus):
    healthy = switch()  # a success to compare with, on a fleet that may not have archived since its deploy
    eventually(lambda: archiver()["last_archived"] >= healthy, timeout=120, what=f"{healthy} archived")
    before = archive_series()
    fleet("cut", "s3")
    try:
        switch()
        eventually(lambda: archive_series()["failed_count"] > before["failed_count"], timeout=120,
                   what="a failed archive attempt counted")
        failing = [archive_series()]
        eventually(lambda: archive_series()["failed_count"] > failing[0]["failed_count"], timeout=120,
                   what="the failures still rising")
        failing.append(archive_series())
        node = scrape(PRIMARY, "node")
        failed_at = value(node, "mcp_wal_archive_last_failure_timestamp_seconds")
        assert failed_at is not None and failed_at > value(node, "mcp_wal_archive_last_success_timestamp_seconds")
        # The real Prometheus sees it too: the alert is pending (its `for: 5m` is left to the replay below).
        eventually(lambda: prometheus(ARCHIVE_ALERT + ', alertstate="pending"}'), timeout=60,
                   what="MCPWalArchiveFailing pending in Prometheus")
    finally:
        fleet("heal", "s3")
    assert failing[-1]["last_failed_timestamp_seconds"] > failing[-1]["last_archived_timestamp_seconds"]
    fires, report = alert_fires([before, *failing], minutes_held=6)
    assert fires, report
    fires, report = alert_fires([before, *failing], minutes_held=3)  # `for: 5m` not yet over
    assert not fires and "MCPWalArchiveFailing" in report, report
    eventually(lambda: (lambda s: s["last_archived_timestamp_seconds"] > s["last_failed_timestamp_seconds"])(
        archive_series()), timeout=180, what="the archive caught up")
    eventually(lambda: prometheus(ARCHIVE_ALERT + "}") == [], timeout=60, what="MCPWalArchiveFailing gone in Prometheus")
    fires, report = alert_fires([before, *failing, archive_series()], minutes_held=6)
    assert not fires and "MCPWalArchiveFailing" in report, report  # cleared by the success after the failures


def test_a_backup_run_updates_its_freshness_metrics_to_its_record(s3):
    on(PRIMARY, f"systemctl start {BACKUP_UNIT}", timeout=600)
    record = records(s3)[-1]
    node = scrape(PRIMARY, "node")
    assert value(node, "mcp_base_backup_last_success_timestamp_seconds") == record["finished_at"]
    assert value(node, "mcp_base_backup_size_bytes") == record["size_bytes"]
    assert value(node, "mcp_base_backup_duration_seconds") == record["finished_at"] - record["started_at"]
    assert value(node, "mcp_base_backup_verified") == 1
    assert 0 <= time.time() - record["finished_at"] < 600


def test_links_postgres_plants_in_the_metrics_directory_never_make_root_write_through_them():
    """The audit's scenario: as postgres, links to a root-owned canary at the names the metrics directory's writers
    use; then a unit failure is recorded and a root program writes its metrics. The canary is untouched, and the
    deploy's own file (root's, in the sticky directory) cannot be replaced by postgres."""
    metrics, unit = "/var/lib/mcp-portal/metrics", "mcp-canary-probe.service"
    names = [f"unit_failed_{unit}.prom.tmp", f"unit_failed_{unit}.prom", "canary.prom.tmp", "canary.prom"]
    on(PRIMARY, "umask 077 && echo 'root only' > /root/canary")
    on(PRIMARY, f"cd {metrics} && for name in {' '.join(names)}; do runuser -u postgres -- ln -sf /root/canary $name; done")
    try:
        assert on(PRIMARY, f"runuser -u postgres -- ln -sf /root/canary {metrics}/tier.prom", check=False).returncode != 0
        on(PRIMARY, f"systemctl start mcp-unit-failed@{unit}.service", check=False)  # postgres's: cannot open it
        on(PRIMARY, "python3 -IB -c 'import sys; sys.path.insert(0, \"/usr/local/lib/mcp-portal\"); "
                    "from hostside import textfile; textfile.write(\"canary\", [(\"probe\", \"Probe.\", 1)])'")
        assert on(PRIMARY, "stat -c '%U %a %s' /root/canary; cat /root/canary").stdout == "root 600 10\nroot only\n"
        written = on(PRIMARY, f"stat -c '%F %U' {metrics}/canary.prom {metrics}/tier.prom").stdout.splitlines()
        assert written == ["regular file root", "regular file root"]
    finally:
        on(PRIMARY, f"cd {metrics} && rm -f {' '.join(names)} && rm -f /root/canary "
                    f"/var/lib/mcp-portal/failures/{unit}.json && systemctl reset-failed 'mcp-unit-failed@*' || true")
    # the directory as the deploy made it, whatever ran meanwhile (a unit's StateDirectory= would chown it to postgres)
    assert on(PRIMARY, f"stat -c '%U %G %a' {metrics}").stdout == "root postgres 1775\n"
