"""Scrape the tier's exporters as Prometheus does: HTTPS checked against the tier's CA, basic auth."""

import base64
import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path

SECRETS = Path(__file__).resolve().parents[1] / ".secrets" / "local"
PORTS = {"node": 9100, "postgres": 9187, "pgbouncer": 9127}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def password():
    return (SECRETS / "passwords" / "scrape_prometheus").read_text().strip()


def fetch(host, exporter, user="prometheus", secret=None):
    """(HTTP status, body) of https://host:port/metrics."""
    context = ssl.create_default_context(cafile=str(SECRETS / "tls" / "ca.crt"))
    request = urllib.request.Request(f"https://{host}:{PORTS[exporter]}/metrics")
    if user is not None:
        token = base64.b64encode(f"{user}:{password() if secret is None else secret}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


def parse(text):
    """[(name, {label: value}, float)] of a text exposition."""
    samples = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            samples.append((match.group(1), dict(LABEL.findall(match.group(2) or "")), float(match.group(3))))
    return samples


def scrape(host, exporter):
    status, body = fetch(host, exporter)
    assert status == 200, f"{host} {exporter} exporter answered {status}"
    return parse(body)


def value(samples, metric, **labels):
    """The one sample of `metric` whose labels include `labels`; None when there is none."""
    found = [v for n, have, v in samples if n == metric and labels.items() <= have.items()]
    assert len(found) <= 1, f"{metric}{labels}: {len(found)} samples"
    return found[0] if found else None
