"""SQL the deploy runs on a host: on psql's stdin, never in a command line, one transaction per script; and SQL the
deploy owns (outside the portal's migrations), applied only when it changed.

The object a script makes carries a comment with a hash of the script's template and values; the deploy reads
that comment as a fact at plan time, so a converged host runs nothing and `--dry` shows exactly what will run.
"""

import hashlib
import json
from pathlib import Path
from shlex import quote

from jinja2 import Environment

from pyinfra import host
from pyinfra.operations import server

from deploys.facts import ObjectComment
from deploys.knobs import knobs


def identifier(name):
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(value):
    """`value` as a quoted SQL string literal (standard_conforming_strings is on)."""
    return "'" + str(value).replace("'", "''") + "'"


TEMPLATES = Environment(autoescape=False, keep_trailing_newline=True)
TEMPLATES.filters.update(identifier=identifier, literal=literal)


def psql(database=None):
    """psql as postgres on this host's cluster, stopping at the first error."""
    k = knobs()
    target = f" -d {quote(database)}" if database else ""
    return f"runuser -u postgres -- psql --cluster {k.postgres_major}/{k.postgres_cluster}{target} -XqAt -v ON_ERROR_STOP=1"


def run(name, sql, database=None, transaction=True):
    """An operation that runs `sql`, the text on psql's stdin: in one transaction unless `transaction` is False
    (CREATE DATABASE cannot run in one)."""
    return server.shell(name=name, commands=[psql(database) + (" --single-transaction" if transaction else "")],
                        _stdin=sql)


def apply(name, template, database, kind, marked, label, **values):
    """Run `template` in one transaction in `database` unless object `marked` (kind: function|table) already
    carries the marker of this template and these values. The template sets `COMMENT ... IS {{ marker | literal }}`,
    and quotes every name with `| identifier`."""
    source = Path(template).read_text()
    digest = hashlib.sha256((source + json.dumps(values, sort_keys=True)).encode()).hexdigest()[:16]
    marker = f"{label} {digest}"
    k = knobs()
    have = host.get_fact(ObjectComment, major=k.postgres_major, cluster=k.postgres_cluster,
                         database=database, kind=kind, signature=marked)
    if have != marker:
        run(name, TEMPLATES.from_string(source).render(marker=marker, **values), database)
