"""Which database host is the primary: a one-line record beside the inventory, rewritten by `mcp-ha switchover`
and `mcp-ha failover` when they promote a replica, so the inventory never disagrees with the promotion they made
(docs/failover.md). Without a record, the first database host listed is the primary."""

from pathlib import Path


def database_groups(record, database_hosts):
    """(primary, replicas) as pyinfra host lists; every database host carries `primary_record` (the record's path)
    so the failover commands know which file to rewrite. SystemExit with one line on a bad record."""
    record = Path(record)
    names = [name for name, _ in database_hosts]
    primary = record.read_text().strip() if record.exists() else names[0]
    if primary not in names:
        raise SystemExit(f"{record}: names {primary!r}, not one of the inventory's database hosts "
                         f"({', '.join(names)}); write the live primary's name there (docs/failover.md)")
    hosts = [(name, dict(data, primary_record=str(record))) for name, data in database_hosts]
    return [h for h in hosts if h[0] == primary], [h for h in hosts if h[0] != primary]


def record_primary(record, name):
    """Write the record atomically: a half-written name would stop every later deploy."""
    record = Path(record)
    partial = record.with_name(record.name + ".partial")
    partial.write_text(name + "\n")
    partial.replace(record)
