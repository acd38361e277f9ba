"""The slow-query log, read back through SQL and ranked: the "top offenders" table.

PostgreSQL logs every statement that runs longer than ``log_min_duration_statement`` milliseconds
(``0`` logs all of them, with their duration). The course server writes its log as JSON lines
(``jsonlog``); this module turns the setting on **for tagged connections only** (a per-connection
option, like :mod:`perflab.probes` does for statement counts), reads the log through SQL
(``pg_read_binary_file``) and groups the entries by statement shape::

    with slowlog.capture(lesson.dsn, min_duration_ms=0) as log:
        run_the_workload(log.dsn)            # connect with log.dsn
    log.entries                              # tidy: name, shape, sql, ms
    slowlog.top_offenders(log.entries)       # shape, calls, total_ms, mean_ms, p95_ms, share

Statements can carry a name in a leading SQL comment, ``/* q:monthly_report */ SELECT …`` (the way
sqlcommenter tags queries with their route); the table then shows it.

``pg_stat_statements`` keeps the same totals inside the server without a log; ``stat_statements_status``
says whether this server has it (the pip-installed server ships without contrib, the docker-compose
one preloads it) and ``from_stat_statements`` reads the same table from it.
"""
from __future__ import annotations

import contextlib
import re
import secrets
from typing import Iterator

import numpy as np
import pandas as pd

from perflab import probes, stack

__all__ = ["capture", "SlowLog", "top_offenders", "stat_statements_status", "from_stat_statements"]

_DURATION = re.compile(r"^duration: ([\d.]+) ms\s+(?:statement|execute [^:]+): (.*)$", re.S)
_NAME = re.compile(r"/\*\s*q:([\w.-]+)\s*\*/")


class SlowLog:
    """Entries of the slow-query log written by connections made with :attr:`dsn`."""

    def __init__(self, dsn: str, min_duration_ms: float = 0):
        self.base_dsn = dsn
        self.min_duration_ms = min_duration_ms
        self.tag = f"perflab-slowlog-{secrets.token_hex(6)}"
        self.entries = pd.DataFrame(columns=["name", "shape", "sql", "ms"])
        self._start = None

    @property
    def dsn(self) -> str:
        return stack.with_params(self.base_dsn, application_name=self.tag,
                                 options=f"-c log_min_duration_statement={self.min_duration_ms:g}")

    def __enter__(self) -> "SlowLog":
        with probes.admin_connection(self.base_dsn) as conn:
            self._start = probes.log_position(conn)
        return self

    def __exit__(self, *exc_info) -> None:
        self.collect()

    def collect(self, timeout: float = 10.0) -> None:
        # The sentinel must itself be slow enough to be logged.
        mine, sentinel = probes.tagged_log_entries(
            self.base_dsn, self.dsn, self.tag, self._start, timeout=timeout,
            sentinel_sql=f"SELECT '{{sentinel}}', pg_sleep({max(self.min_duration_ms, 0) / 1000 + 0.001})")
        rows = []
        for entry in mine:
            match = _DURATION.match(entry.get("message", ""))
            if not match or sentinel in match.group(2):
                continue
            sql = match.group(2).strip()
            name = _NAME.search(sql)
            rows.append({"name": name.group(1) if name else "", "shape": probes.normalize(sql), "sql": sql,
                         "ms": float(match.group(1))})
        self.entries = pd.DataFrame(rows, columns=["name", "shape", "sql", "ms"])

    @property
    def total_ms(self) -> float:
        return float(self.entries.ms.sum())


@contextlib.contextmanager
def capture(dsn: str, min_duration_ms: float = 0) -> Iterator[SlowLog]:
    """Log statements of connections made with ``log.dsn`` that take at least ``min_duration_ms``."""
    log = SlowLog(dsn, min_duration_ms)
    with log:
        yield log


def top_offenders(entries: pd.DataFrame, limit: int | None = None) -> pd.DataFrame:
    """One row per statement shape, ranked by total time: calls, total, mean, p95 (ms), share of the total."""
    if entries.empty:
        return pd.DataFrame(columns=["name", "shape", "calls", "total_ms", "mean_ms", "p95_ms", "share"])
    grouped = entries.groupby("shape", sort=False)
    table = pd.DataFrame({
        "name": grouped["name"].first(),
        "calls": grouped.size(),
        "total_ms": grouped["ms"].sum(),
        "mean_ms": grouped["ms"].mean(),
        "p95_ms": grouped["ms"].apply(lambda ms: float(np.percentile(ms, 95))),
    })
    table["share"] = table.total_ms / table.total_ms.sum()
    table = table.sort_values("total_ms", ascending=False).reset_index()
    table.index = pd.RangeIndex(1, len(table) + 1, name="rank")
    table = table[["name", "shape", "calls", "total_ms", "mean_ms", "p95_ms", "share"]]
    return table.head(limit) if limit else table


def stat_statements_status(dsn: str) -> tuple[bool, str]:
    """(usable, why): is pg_stat_statements installed and preloaded on this server?"""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'").fetchone()
        preload = conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    if not available:
        return False, ("pg_stat_statements is not available on this server (the pip-installed PostgreSQL ships "
                       "without the contrib extensions); the slow-query log gives the same table")
    if "pg_stat_statements" not in preload:
        return False, ("pg_stat_statements is installed but not in shared_preload_libraries, so it records "
                       "nothing; add it there and restart (the docker-compose server does)")
    return True, "pg_stat_statements is available and preloaded"


def from_stat_statements(dsn: str, limit: int = 15) -> pd.DataFrame:
    """The top-offenders table from pg_stat_statements (calls, total, mean; no percentiles: it keeps none)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        rows = conn.execute(
            "SELECT query, calls, total_exec_time, mean_exec_time, stddev_exec_time FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "ORDER BY total_exec_time DESC LIMIT %s", (limit,)).fetchall()
    table = pd.DataFrame(rows, columns=["shape", "calls", "total_ms", "mean_ms", "stddev_ms"])
    table.insert(0, "name", [(_NAME.search(q).group(1) if _NAME.search(q) else "") for q in table.shape])
    return table
