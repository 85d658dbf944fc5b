"""Custom pyinfra facts: the state the deploys decide from at plan time, so `--dry` tells the truth."""

import json

from pyinfra.api import FactBase


class AptHolds(FactBase):
    """Packages held with `apt-mark hold`."""

    command = "apt-mark showhold"
    default = list

    def process(self, output):
        return sorted(line.strip() for line in output if line.strip())


class PostgresClusters(FactBase):
    """Debian's PostgreSQL clusters: {"17/main": {"status", "datadir", "checksums", "databases"}}.

    `databases` counts the directories under base/ (template0, template1 and postgres make 3), so it is
    known without the cluster running; `checksums` comes from pg_controldata.
    """

    requires_command = "pg_lsclusters"
    default = dict
    command = r"""pg_lsclusters --no-header | while read -r version name port status owner datadir rest; do
  checksums=$(/usr/lib/postgresql/$version/bin/pg_controldata "$datadir" | sed -n 's/^Data page checksum version: *//p')
  printf '%s %s %s %s %s %s\n' "$version" "$name" "$status" "$datadir" "${checksums:-0}" "$(ls "$datadir/base" | wc -l)"
done"""

    def process(self, output):
        clusters = {}
        for line in output:
            version, name, status, datadir, checksums, databases = line.split()
            clusters[f"{version}/{name}"] = {
                "status": status, "datadir": datadir, "checksums": checksums != "0", "databases": int(databases),
            }
        return clusters


class PostgresSettings(FactBase):
    """The running cluster's pg_settings: {name: {"setting", "context", "pending_restart"}}; {} when it is down."""

    default = dict

    def command(self, major, cluster):
        query = ("select json_object_agg(name, json_build_object('setting', setting, 'context', context, "
                 "'pending_restart', pending_restart)) from pg_settings")
        return (f"if pg_lsclusters --no-header {major} {cluster} 2>/dev/null | grep -q online; then "
                f"runuser -u postgres -- psql -XtA --cluster {major}/{cluster} -c \"{query}\"; fi")

    def process(self, output):
        text = "".join(output).strip()
        return json.loads(text) if text else {}
