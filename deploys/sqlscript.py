"""SQL the deploy owns (outside the portal's migrations), applied only when it changed.

The object a script makes carries a comment with a hash of the script's template and values; the deploy reads
that comment as a fact at plan time, so a converged host runs nothing and `--dry` shows exactly what will run.
"""

import hashlib
import json
from pathlib import Path

from jinja2 import Template

from pyinfra import host
from pyinfra.operations import server

from deploys.facts import ObjectComment


def psql(database=None):
    """psql as postgres on this host's cluster, stopping at the first error."""
    target = f" -d {database}" if database else ""
    return (f"runuser -u postgres -- psql --cluster {host.data.postgres_major}/{host.data.postgres_cluster}{target} "
            "-XqAt -v ON_ERROR_STOP=1")


def apply(name, template, database, kind, marked, label, **values):
    """Run `template` in one transaction in `database` unless object `marked` (kind: function|table) already
    carries the marker of this template and these values. The template sets `COMMENT ... IS '{{ marker }}'`."""
    source = Path(template).read_text()
    digest = hashlib.sha256((source + json.dumps(values, sort_keys=True)).encode()).hexdigest()[:16]
    marker = f"{label} {digest}"
    have = host.get_fact(ObjectComment, major=host.data.postgres_major, cluster=host.data.postgres_cluster,
                         database=database, kind=kind, signature=marked)
    if have != marker:
        sql = Template(source).render(marker=marker, **values)
        server.shell(name=name, commands=[f"{psql(database)} --single-transaction <<'SQL'\n{sql}\nSQL"])
