"""Lab 07's drivers: course code that runs INSIDE a grading sandbox, next to the answers it calls.

The grader sends JSON (a customer id, a key prefix, a count) and gets JSON back (a dashboard, a few
notes). Everything a call needs is built here, on the sandbox's side, from its environment: the
sandbox's own database role on its own clone (``DATABASE_URL``, through `caching.ShopDB`) and its own
throwaway Redis (``REDIS_URL``, through `stack.redis_client`). ``answers.get_dashboard`` and
``answers.rename_customer`` are that side's answers (the learner's, the solution notebook's, or the
starter's).

Nothing returned from here is trusted for a pass: the grader counts statements per role in
PostgreSQL's log, reads the Redis server's own statistics, watches pg_locks, and computes the truth on
its own connection. What comes back is only what the learner's function returned (to compare with
that truth).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

from perflab import stack
from perflab.topics.t07_caching import rig as caching

# What lasts across calls in this sandbox process: one Redis client, one ShopDB per (prefix, pool size).
_STATE: dict[str, Any] = {"dbs": {}}


def _redis():
    if "redis" not in _STATE:
        _STATE["redis"] = stack.redis_client(os.environ["REDIS_URL"])
    return _STATE["redis"]


def _db(prefix: str, pool_size: int = 2, warm: bool = False) -> caching.ShopDB:
    key = (prefix, pool_size)
    if key not in _STATE["dbs"]:
        _STATE["dbs"][key] = caching.ShopDB(os.environ["DATABASE_URL"], prefix=prefix, pool_size=pool_size, warm=warm)
    return _STATE["dbs"][key]


def close(answers, prefix: str) -> int:
    """Close this prefix's connection pools (the role has a connection limit). Returns how many."""
    closing = [key for key in _STATE["dbs"] if key[0] == prefix]
    for key in closing:
        _STATE["dbs"].pop(key).close()
    return len(closing)


def get(answers, customer_id: int, prefix: str, fresh_db: bool = False) -> Any:
    """``get_dashboard(r, db, customer_id)``; ``fresh_db``: through a new ShopDB (its own pool) on the same keys."""
    if fresh_db:
        with caching.ShopDB(os.environ["DATABASE_URL"], prefix=prefix, pool_size=1) as db:
            return answers.get_dashboard(_redis(), db, customer_id)
    return answers.get_dashboard(_redis(), _db(prefix), customer_id)


def gets(answers, customer_id: int, prefix: str, repeat: int = 1) -> Any:
    """``get_dashboard`` ``repeat`` times back to back (one timed round trip for many hits); the last value."""
    r, db = _redis(), _db(prefix)
    value = None
    for _ in range(max(1, int(repeat))):
        value = answers.get_dashboard(r, db, customer_id)
    return value


def rename(answers, customer_id: int, name: str, prefix: str) -> Any:
    """``rename_customer(r, db, customer_id, name)``."""
    return answers.rename_customer(_redis(), _db(prefix), customer_id, name)


# The dashboard query of a reader the grader parks from outside: the statement takes its snapshot (the old
# row) when it starts, then waits for a shared advisory lock the grader holds; the grader lets it go
# after the writer has returned. The grader sees it waiting in pg_locks, whatever the learner's code does.
PARKED_DASHBOARD_SQL = caching.DASHBOARD_SQL.replace(
    "/* perflab:dashboard */",
    "/* perflab:dashboard (parked by the grader) */\n"
    "WITH parked AS MATERIALIZED (SELECT pg_catalog.pg_advisory_xact_lock_shared(%s::int, %s::int))", 1,
).replace("FROM customers c", "FROM parked, customers c", 1)


class ParkedShopDB(caching.ShopDB):
    """A ShopDB whose dashboard query waits, after its snapshot, for the grader's advisory lock ``lock``."""

    _dashboard_sql = PARKED_DASHBOARD_SQL

    def __init__(self, dsn: str, *, lock: tuple[int, int], **kwargs) -> None:
        super().__init__(dsn, **kwargs)
        self.lock = (int(lock[0]), int(lock[1]))

    def _dashboard_params(self, customer_id: int) -> tuple:
        return (*self.lock, customer_id)


def ready(answers) -> int:
    """Nothing: the process is up, with the answers loaded (the grader starts one before a timed step)."""
    _redis().ping()
    return os.getpid()


def parked_get(answers, customer_id: int, prefix: str, lock: list) -> Any:
    """``get_dashboard`` whose database query is parked by the grader (see `ParkedShopDB`)."""
    with ParkedShopDB(os.environ["DATABASE_URL"], prefix=prefix, pool_size=1, lock=tuple(lock)) as db:
        return answers.get_dashboard(_redis(), db, customer_id)


def herd_prepare(answers, customer_id: int, prefix: str, pool_size: int) -> int:
    """Open this process's warm pool for the herd before the grader releases it (connections are not timed)."""
    _db(prefix, pool_size, warm=True)
    _redis().ping()
    return os.getpid()


def herd(answers, customer_id: int, prefix: str, n: int, pool_size: int, start_at: float,
         timeout: float = 60.0) -> dict:
    """``n`` threads of this process call ``get_dashboard`` for ``customer_id`` at the same instant.

    The grader releases several sandbox processes at once (``start_at``, wall-clock seconds), so the
    herd is as many processes as the application would have; this one waits for that instant, then
    releases its threads together (`caching.stampede`)."""
    r, db = _redis(), _db(prefix, pool_size, warm=True)
    delay = start_at - time.time()
    if delay > 0:
        threading.Event().wait(min(delay, 10.0))
    result = caching.stampede(lambda: answers.get_dashboard(r, db, customer_id), n=n, timeout=timeout)
    return {"results": result.results, "errors": [f"{type(e).__name__}: {e}" for e in result.errors][:5],
            "error_count": len(result.errors), "p99_ms": result.p99_ms if result.latencies else None}
