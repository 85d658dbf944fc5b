"""A steady write load through PgBouncer's read-write entry, as the portal would put on it: a few clients, each
inserting rows one transaction at a time and keeping the id of every row whose commit was acknowledged."""

import threading
import time

import psycopg

from tests.e2e.test_pgbouncer import connect

TABLE = "drill_writes"
CREATE = (f"drop table if exists public.{TABLE}; "
          f"create table public.{TABLE} (id bigint generated always as identity primary key, at timestamptz not null default now()); "
          f"grant select, insert on public.{TABLE} to portal_app")


class WriteLoad:
    def __init__(self, clients=4):
        self.acknowledged = {}  # id -> WAL insert position read just after the commit returned (None: not read)
        self.failures = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        """Stop the clients; {id: position} of the acknowledged rows. A client stuck on a lost primary is left
        behind (its row was never acknowledged; it fails when that primary fences itself)."""
        self._stop.set()
        deadline = time.monotonic() + 10
        for thread in self._threads:
            thread.join(timeout=max(0, deadline - time.monotonic()))
        return dict(self.acknowledged)

    def wait_for(self, count, timeout=60):
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, f"{len(self.acknowledged)} rows acknowledged in {timeout}s, wanted {count}"
            time.sleep(0.1)

    def _client(self):
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = connect("portal")
                row = conn.execute(f"insert into public.{TABLE} default values returning id").fetchone()[0]
                self.acknowledged[row] = None  # autocommit: the insert returned, so its commit did
                # An upper bound on where the commit record ends: what the server has written by the next statement.
                self.acknowledged[row] = conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()[0]
            except psycopg.Error as exc:
                self.failures.append(f"{type(exc).__name__}: {str(exc).strip()}")
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()
