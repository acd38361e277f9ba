"""What topic 7 (caching with Redis) and its lab share: the slow query, its database, the experiments.

    from perflab.topics.t07_caching import rig as caching
    db = caching.ShopDB(lesson.dsn)          # a small connection pool over this notebook's copy
    db.dashboard(7)                          # the slow query: one customer's revenue by category
    db.key("dashboard", 7)                   # 'perflab:c0ffee:dashboard:7' — keys are namespaced
    r = lesson.redis()
    caching.stampede(lambda: get(r, db, 7), n=100)     # 100 threads released at once
    caching.stale_set_race(get, rename, r, db, 7, "New name")   # the race, forced, not hoped for

Everything is real: the query runs on PostgreSQL, the cache is the course's Redis. Each
:class:`ShopDB` has its own key prefix (a notebook, a lab run and the grader never read each
other's keys on the shared server) and :meth:`ShopDB.clear_cache` deletes exactly those keys.

Hooks for forced interleaving: ``db.after_read`` (if set) is called with ``(customer_id, value)``
after every dashboard query returns and before the caller gets the value; a test or a lesson uses it
to park a reader at the worst moment with a ``threading.Event``.
"""
from __future__ import annotations

import contextlib
import json
import pickle
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import numpy as np

# What a learner's recorded function may use without importing it (the lab says so); the grader
# re-creates get_dashboard/rename_customer in a scope pre-filled with these (LabSpec.namespace).
NAMESPACE = {"json": json, "pickle": pickle, "msgpack": msgpack, "time": time, "secrets": secrets,
             "threading": threading}

# The marker comment survives into the server's log, so probes can count exactly these queries.
DASHBOARD_SQL = """/* perflab:dashboard */
SELECT c.name, c.tier, p.category,
       count(DISTINCT o.id) AS orders, sum(oi.quantity) AS items,
       sum(oi.quantity * oi.unit_price) AS revenue
FROM customers c
LEFT JOIN orders o ON o.customer_id = c.id
LEFT JOIN order_items oi ON oi.order_id = o.id
LEFT JOIN products p ON p.id = oi.product_id
WHERE c.id = %s
GROUP BY c.name, c.tier, p.category
ORDER BY revenue DESC NULLS LAST, p.category"""
DASHBOARD_MARKER = "perflab:dashboard"

ORDERS_SQL = """SELECT id, status, created_at, total FROM orders WHERE customer_id = %s ORDER BY id"""

# A "hot" dashboard should take tens of milliseconds at every scale: the busiest customer with at
# most this many orders (at tiny scale the big tenant, customer 1; at small scale a busy customer).
HOT_CUSTOMER_MAX_ORDERS = 7_000


class ShopDB:
    """The course data behind the cache: a connection pool, the slow dashboard query and a write."""

    def __init__(self, dsn: str, *, prefix: str | None = None, pool_size: int = 10, warm: bool = False):
        from psycopg_pool import ConnectionPool

        self.dsn = dsn
        self.prefix = prefix or f"perflab:{secrets.token_hex(4)}:"
        # warm=True opens every connection up front, so a burst does not also time connection set-up.
        self.pool = ConnectionPool(dsn, min_size=pool_size if warm else 1, max_size=pool_size,
                                   kwargs={"autocommit": True}, open=True, name=f"shopdb-{self.prefix}")
        if warm:
            self.pool.wait(timeout=30)
        self.after_read: Callable[[int, dict], None] | None = None
        self.queries = 0  # client-side count; the lessons trust the server's (probes) instead
        self._lock = threading.Lock()

    # -- keys ---------------------------------------------------------------------------------
    def key(self, *parts: Any) -> str:
        """A cache key in this database's namespace: ``db.key("dashboard", 7)``."""
        return self.prefix + ":".join(str(p) for p in parts)

    def clear_cache(self, r) -> int:
        """Delete every key of this namespace; returns how many."""
        keys = list(r.scan_iter(match=self.prefix + "*", count=1000))
        if keys:
            r.delete(*keys)
        return len(keys)

    # -- reads --------------------------------------------------------------------------------
    _dashboard_sql = DASHBOARD_SQL  # a subclass may run it differently (the grader parks a reader in it)

    def _dashboard_params(self, customer_id: int) -> tuple:
        return (customer_id,)

    def dashboard(self, customer_id: int) -> dict:
        """The slow query: a customer's name, tier, and orders/items/revenue per product category."""
        with self.pool.connection() as conn:
            rows = conn.execute(self._dashboard_sql, self._dashboard_params(customer_id)).fetchall()
        with self._lock:
            self.queries += 1
        if not rows:
            raise KeyError(f"no customer {customer_id}")
        value = {
            "customer_id": customer_id, "name": rows[0][0], "tier": rows[0][1],
            # revenue as a string: exact (a Decimal), and the same after JSON, pickle or msgpack
            "categories": [[category, orders, int(items or 0), str(revenue or 0)]
                           for _, _, category, orders, items, revenue in rows if category is not None],
        }
        hook = self.after_read
        if hook is not None:
            hook(customer_id, value)
        return value

    def orders(self, customer_id: int) -> list[dict]:
        """A bigger value to serialize: every order of a customer."""
        with self.pool.connection() as conn:
            rows = conn.execute(ORDERS_SQL, (customer_id,)).fetchall()
        return [{"id": i, "status": s, "created_at": c.isoformat(), "total": str(t)} for i, s, c, t in rows]

    def hot_customer(self) -> int:
        """The busiest customer whose dashboard is still a query of tens of ms (see HOT_CUSTOMER_MAX_ORDERS)."""
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT customer_id FROM orders GROUP BY customer_id HAVING count(*) <= %s "
                "ORDER BY count(*) DESC, customer_id LIMIT 1", (HOT_CUSTOMER_MAX_ORDERS,)).fetchone()[0]

    def customers(self) -> list[int]:
        with self.pool.connection() as conn:
            return [row[0] for row in conn.execute("SELECT id FROM customers ORDER BY id")]

    # -- writes -------------------------------------------------------------------------------
    def rename(self, customer_id: int, name: str) -> None:
        """UPDATE the customer's name and COMMIT before returning."""
        with self.pool.connection() as conn:
            with conn.transaction():
                conn.execute("UPDATE customers SET name = %s WHERE id = %s", (name, customer_id))

    @contextlib.contextmanager
    def transaction(self):
        """A connection inside an open transaction (commit at the end of the block)."""
        with self.pool.connection() as conn:
            with conn.transaction():
                yield conn

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "ShopDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ShopDB prefix={self.prefix!r} pool={self.pool.max_size}>"


# --------------------------------------------------------------------------------------------
# Concurrency experiments
# --------------------------------------------------------------------------------------------

@dataclass
class StampedeResult:
    n: int
    latencies: list[float]  # seconds from the common release to each call's return
    results: list[Any]
    errors: list[BaseException] = field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def p50_ms(self) -> float:
        return 1000 * self.percentile(50)

    @property
    def p99_ms(self) -> float:
        return 1000 * self.percentile(99)


def stampede(call: Callable[[], Any], n: int = 100, timeout: float = 60.0) -> StampedeResult:
    """Run ``call`` in ``n`` threads released at the same instant (a barrier); time each from the release.

    The time is measured from the common release, not from each thread's own start, so a thread that
    was scheduled late is not flattered.
    """
    release: dict[str, float] = {}
    barrier = threading.Barrier(n, action=lambda: release.setdefault("t0", time.perf_counter()))
    latencies: list[float | None] = [None] * n
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout)
            results[i] = call()
            latencies[i] = time.perf_counter() - release["t0"]
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True, name=f"stampede-{i}") for i in range(n)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, timeout - (time.perf_counter() - started)))
    if any(t.is_alive() for t in threads):
        errors.append(TimeoutError(f"{sum(t.is_alive() for t in threads)} of {n} calls did not return in {timeout:g} s"))
    return StampedeResult(n=n, latencies=[x for x in latencies if x is not None], results=results,
                          errors=errors, seconds=time.perf_counter() - started)


@dataclass
class RaceOutcome:
    """What the forced interleaving left behind."""

    reader_got: Any
    database_now: Any
    read_after_write: Any
    writer_seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def stale(self) -> bool:
        """True when a read after the writer returned (and after the racing reader finished) is stale."""
        return self.read_after_write != self.database_now


def stale_set_race(get: Callable, write: Callable, r, db: ShopDB, customer_id: int, new_name: str,
                   timeout: float = 5.0) -> RaceOutcome:
    """Force the stale-set interleaving, step by step, with events instead of luck:

    1. the cache is empty; a reader misses and queries the database (old row) — and is parked there;
    2. a writer runs ``write(r, db, customer_id, new_name)`` to completion (update, commit, invalidate);
    3. the reader resumes and does whatever it does with the old row (a naive one caches it);
    4. a fresh ``get`` — after the writer returned — must see the new name.
    """
    db.clear_cache(r)
    read_done, resume = threading.Event(), threading.Event()
    parked = {"done": False}

    def park_first_reader(cid: int, value: dict) -> None:
        if not parked["done"] and cid == customer_id:
            parked["done"] = True
            read_done.set()
            resume.wait(timeout)

    outcome: dict[str, Any] = {}
    notes: list[str] = []

    def reader() -> None:
        try:
            outcome["reader"] = get(r, db, customer_id)
        except BaseException as exc:  # noqa: BLE001
            outcome["reader_error"] = exc

    def writer() -> None:
        try:
            write(r, db, customer_id, new_name)
        except BaseException as exc:  # noqa: BLE001
            outcome["writer_error"] = exc

    db.after_read = park_first_reader
    try:
        reading = threading.Thread(target=reader, daemon=True)
        reading.start()
        if not read_done.wait(timeout):
            notes.append("the reader never queried the database on a cache miss")
        writing = threading.Thread(target=writer, daemon=True)
        started = time.perf_counter()
        writing.start()
        writing.join(timeout)
        writer_seconds = time.perf_counter() - started
        if writing.is_alive():
            notes.append(f"the writer was still waiting after {timeout:g} s (it waits for the parked reader?)")
        resume.set()
        reading.join(timeout)
        writing.join(timeout)
    finally:
        db.after_read = None
        resume.set()
    for key in ("reader_error", "writer_error"):
        if key in outcome:
            raise outcome[key]
    fresh = db.dashboard(customer_id)
    return RaceOutcome(reader_got=outcome.get("reader"), database_now=fresh,
                       read_after_write=get(r, db, customer_id), writer_seconds=writer_seconds, notes=notes)


# --------------------------------------------------------------------------------------------
# Key distributions and hit ratios
# --------------------------------------------------------------------------------------------

def zipf_keys(n_keys: int, n_requests: int, s: float = 1.1, seed: int = 7) -> np.ndarray:
    """Request keys 1..n_keys where key k is requested with probability proportional to 1/k**s."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_keys + 1) ** s
    return rng.choice(np.arange(1, n_keys + 1), size=n_requests, p=weights / weights.sum())


def uniform_keys(n_keys: int, n_requests: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, n_keys + 1, size=n_requests)


def hit_ratio(r, prefix: str, keys, ttl_ms: int | None, value: bytes = b"x" * 200) -> dict:
    """Replay a stream of requests against real Redis: a request hits when its key is present.

    ``SET key value NX PX ttl`` is one round trip that both asks "was it there?" (it refuses to
    overwrite) and, on a miss, stores it with its TTL, so expiry is Redis's own, in real time.
    """
    started = time.perf_counter()
    misses = 0
    for k in keys:
        if ttl_ms:
            stored = r.set(f"{prefix}{k}", value, nx=True, px=int(ttl_ms))
        else:
            stored = r.set(f"{prefix}{k}", value, nx=True)
        misses += bool(stored)
    seconds = time.perf_counter() - started
    keys_deleted = list(r.scan_iter(match=prefix + "*", count=1000))
    if keys_deleted:
        r.delete(*keys_deleted)
    return {"requests": len(keys), "misses": misses, "hit_ratio": 1 - misses / len(keys),
            "seconds": seconds, "requests_per_s": len(keys) / seconds if seconds else float("nan")}
