"""A steady write load through PgBouncer's read-write entry, as the portal would put on it: a few clients, each
inserting rows one transaction at a time and keeping, for every row whose commit was acknowledged, when it was
acknowledged. From those: how long no write was acknowledged (the recovery time a client saw) and which
acknowledged rows a new leader lacks (the data a failover lost)."""

import threading
import time

import psycopg

from tests.e2e.test_pgbouncer import connect

TABLE = "drill_writes"
CREATE = (f"drop table if exists public.{TABLE}; "
          f"create table public.{TABLE} (id bigint generated always as identity primary key, at timestamptz not null default now()); "
          f"grant select, insert on public.{TABLE} to portal_app")
# Both PgBouncer hosts, as the portal's connection string names them: libpq tries them in order.
POOLERS = "pgbouncer-1,pgbouncer-2"


class WriteLoad:
    def __init__(self, clients=4, poolers=POOLERS):
        self.acknowledged = {}  # id -> time.time() when its commit was acknowledged (the hosts share this clock)
        self.served_by = {}  # id -> the address of the server that committed it
        self.failures = []  # (time.time(), error)
        self.poolers = poolers
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        """Stop the clients; {id: when acknowledged}. A client stuck on a lost leader is left behind (its row was
        never acknowledged)."""
        self._stop.set()
        deadline = time.monotonic() + 10
        for thread in self._threads:
            thread.join(timeout=max(0, deadline - time.monotonic()))
        return dict(self.acknowledged)

    def wait_for(self, count, timeout=90):
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count:
            assert time.monotonic() < deadline, (f"{len(self.acknowledged)} rows acknowledged in {timeout}s, wanted "
                                                 f"{count}; last errors: {self.failures[-3:]}")
            time.sleep(0.1)

    def failures_since(self, since):
        """The client errors from `since` (time.time()) on: what a fault caused, not the load's own start."""
        return [failure for failure in list(self.failures) if failure[0] >= since]

    def first_commit_on(self, address, since):
        """When the first row after `since` committed by the server at `address` was acknowledged (None: none was)."""
        return min((t for r, t in list(self.acknowledged.items()) if t > since and self.served_by.get(r) == address),
                   default=None)

    def more(self, count=100, timeout=90):
        """Wait for `count` more acknowledged rows than now: writes go on."""
        self.wait_for(len(self.acknowledged) + count, timeout)

    def outage(self, since):
        """The longest time after `since` (time.time()) that no commit was acknowledged: what a client saw of the
        recovery (RTO, as the portal measures it)."""
        times = sorted(t for t in list(self.acknowledged.values()) if t >= since - 1)
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    def _client(self):
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    # A pooler host that vanishes mid-query is given up after 3 s, as the portal's clients do.
                    conn = connect("portal", host=self.poolers, connect_timeout=3, tcp_user_timeout=3000)
                row, server = conn.execute(f"insert into public.{TABLE} default values "
                                           "returning id, host(inet_server_addr())").fetchone()
                self.acknowledged[row] = time.time()  # autocommit: the insert returned, so its commit did
                self.served_by[row] = server
            except psycopg.Error as exc:
                self.failures.append((time.time(), f"{type(exc).__name__}: {str(exc).strip()}"))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()
