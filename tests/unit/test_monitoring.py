"""The alert rules and the example scrape configuration, checked by Prometheus's own promtool; the rules'
behaviour is unit-tested in monitoring/tests/ (each alert firing, and held back at its boundary)."""

import subprocess
from pathlib import Path

import pytest

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"


def promtool(*args):
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=MONITORING)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_the_rules_are_valid():
    assert "SUCCESS: 38 rules found" in promtool("check", "rules", "alerts.yml")


@pytest.mark.parametrize("test_file", sorted(p.name for p in (MONITORING / "tests").glob("*.yml")))
def test_the_rules_pass_their_unit_tests(test_file):
    assert "SUCCESS" in promtool("test", "rules", f"tests/{test_file}")


def test_the_example_scrape_configuration_is_valid():
    promtool("check", "config", "--syntax-only", "prometheus.yml")
