"""Metrics of the tier's own programs for node-exporter's textfile collector: one file per source in
/var/lib/mcp-portal/metrics, replaced atomically so a scrape never reads half of one (docs/monitoring.md)."""

import os
import sys

from hostside import files, layout

DIRECTORY = layout.METRICS_DIR


def render(gauges):
    """[(name, help, value)] or [(name, help, value, {label: value})] -> text exposition format."""
    lines, described = [], set()
    for name, help_text, value, *labels in gauges:
        if name not in described:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
            described.add(name)
        pairs = ",".join(f'{key}="{val}"' for key, val in sorted((labels[0] if labels else {}).items()))
        number = str(value) if isinstance(value, int) else repr(float(value))
        lines.append(f"{name}{{{pairs}}} {number}" if pairs else f"{name} {number}")
    return "".join(f"{line}\n" for line in lines)


def write(source, gauges, directory=None):
    """Replace <directory>/<source>.prom. Never raises: a metric must not fail the work it reports on."""
    path = os.path.join(directory or os.environ.get("MCP_METRICS_DIR", DIRECTORY), f"{source}.prom")
    try:
        # 644: readable by the node exporter whatever the writer's umask (PostgreSQL's is 077). The directory is
        # postgres's and root writes here too: files.replace never writes through a link planted there.
        files.replace(path, render(gauges), 0o644)
    except OSError as exc:
        print(f"metrics: could not write {path}: {exc}", file=sys.stderr)
