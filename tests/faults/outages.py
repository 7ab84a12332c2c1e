"""Taking one PostgreSQL database away: new connections refused, existing ones terminated.

Only the test's own database: other tests use the same server at the same time.
"""

from __future__ import annotations

import time

import psycopg

from tests.support import servers


class Outage:
    """Makes one database unreachable, for a while or between :meth:`begin` and :meth:`end`."""

    def __init__(self, database_url: str):
        self.name = database_url.rsplit("/", 1)[1]
        self.started: float | None = None
        self.ended: float | None = None
        self.terminated = 0

    @staticmethod
    def _admin():
        return psycopg.connect(servers.MAINTENANCE_DSN, autocommit=True)

    def _terminate(self, conn) -> None:
        self.terminated += conn.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (self.name,),
        ).fetchone()[0]

    def begin(self) -> None:
        """Refuse new connections to the database and terminate every backend it has."""
        with self._admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            self.started = time.monotonic()
            self._terminate(conn)

    def end(self) -> None:
        """Accept connections again."""
        with self._admin() as conn:
            conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')
        self.ended = time.monotonic()

    def run(self, seconds: float) -> None:
        """Keep the database unreachable for ``seconds``, terminating any backend that appears."""
        self.begin()
        try:
            with self._admin() as conn:
                while time.monotonic() - self.started < seconds:
                    self._terminate(conn)
                    time.sleep(0.05)
        finally:
            self.end()
