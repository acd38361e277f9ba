"""Lab 05 · Connection pooling — the grader's checks.

The learner's ``open_app(dsn) -> (handle, close)`` is re-created from its source in this process and
driven here. Correctness: the same answers as the original per-request-connection handler.
Performance contract, valid on any machine: the connections the server itself saw for 200
concurrent requests (at most ``POOL_SIZE``); no leak (every request finishes, no connection left in a
transaction, none left open after ``close()``); and requests per second against the original,
measured in the same run, at least half of the reference's own speed-up.
"""
from __future__ import annotations

import contextlib
import gc
import threading
import time
from decimal import Decimal

import psycopg

from perflab import probes
from perflab.grading.grader import (Check, CheckResult, Exercise, LabSpec, SubmissionError, call_submitted,
                            learner_code)
from perflab.grading.contracts import WrongAnswer, measure_gated, speedup_verdict

ORDER_SUMMARY_SQL = "SELECT count(*), coalesce(sum(total), 0) FROM orders WHERE customer_id = %s"
POOL_SIZE = 4
REQUESTS = 200
THREADS = 8
# Customers 1 and 2 are the big tenants; the rest spread over quiet and busy ones; 999_999 has none.
CHECK_CUSTOMERS = [1, 2, 3, 17, 250, 1500, 1999, 999_999] + [1 + (i * 97) % 2000 for i in range(24)]
REQUEST_TIMEOUT = 10.0  # seconds for one request; a pool's default checkout timeout is 30 s
BURST_TIMEOUT = 12.0

NAMESPACE = {"ORDER_SUMMARY_SQL": ORDER_SUMMARY_SQL, "POOL_SIZE": POOL_SIZE, "psycopg": psycopg}

POOL_HINT = ("create one psycopg_pool.ConnectionPool(dsn, max_size=POOL_SIZE) in open_app, borrow with "
             "`with pool.connection() as conn:` in handle, and close the pool in close()")


def original_app(dsn):
    """The starter: a new connection per request."""
    def handle(customer_id):
        with psycopg.connect(dsn) as conn:
            return conn.execute(ORDER_SUMMARY_SQL, (customer_id,)).fetchone()

    return handle, lambda: None


def reference_app(dsn):
    """The simplest correct pool (default settings: a transaction per request)."""
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(dsn, min_size=1, max_size=POOL_SIZE, open=True)

    def handle(customer_id):
        with pool.connection() as conn:
            return conn.execute(ORDER_SUMMARY_SQL, (customer_id,)).fetchone()

    return handle, pool.close


def _normalise(answer):
    """(count, total) as plain values: a tuple, a Row or a list all compare alike."""
    try:
        count, total = answer
    except (TypeError, ValueError):
        raise SubmissionError(f"handle() should return the query's row (orders, total), got {answer!r}") from None
    return int(count), Decimal(str(total))


def _open(ctx, dsn):
    open_app = ctx.function("open_app", NAMESPACE)
    app = call_submitted(open_app, dsn, timeout=REQUEST_TIMEOUT)
    if not (isinstance(app, (tuple, list)) and len(app) == 2 and all(callable(f) for f in app)):
        raise SubmissionError(f"open_app(dsn) should return (handle, close), two functions; it returned {app!r}")
    return app


def _close(close) -> None:
    call_submitted(close, timeout=REQUEST_TIMEOUT)


def _burst(handle, customers, threads=THREADS, timeout=BURST_TIMEOUT) -> dict:
    """Send the requests from `threads` daemon threads; report answers, errors and unfinished ones."""
    answers: dict[int, object] = {}
    errors: dict[int, BaseException] = {}
    next_index = iter(range(len(customers)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            try:
                answers[i] = handle(customers[i])
            except BaseException as exc:  # noqa: BLE001 - reported to the learner
                errors[i] = exc

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join(max(0.0, timeout - (time.monotonic() - started)))
    unfinished = len(customers) - len(answers) - len(errors)
    return {"answers": answers, "errors": errors, "unfinished": unfinished,
            "seconds": time.monotonic() - started}


def _server_sessions(dsn: str, tag: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT pid, state FROM pg_stat_activity WHERE application_name = %s",
                            (tag,)).fetchall()


def _concurrent_run(ctx) -> dict:
    """200 requests from 8 threads through the submission, counted server-side (shared by two checks)."""
    if "run" in ctx.scratch:
        return ctx.scratch["run"]
    customers = [1 + (i * 37) % 2000 for i in range(REQUESTS)]
    with probes.count_statements(ctx.dsn) as probe:
        handle, close = _open(ctx, probe.dsn)
        try:
            burst = _burst(handle, customers)
            sessions_after_burst = _server_sessions(ctx.dsn, probe.tag)
        finally:
            try:
                _close(close)
                close_error = None
            except SubmissionError as exc:
                close_error = str(exc)
        time.sleep(0.2)  # a closed connection's backend exits asynchronously
        sessions_after_close = _server_sessions(ctx.dsn, probe.tag)
    run = {"burst": burst, "connections": probe.connections, "after_burst": sessions_after_burst,
           "after_close": sessions_after_close, "close_error": close_error}
    ctx.scratch["run"] = run
    return run


@contextlib.contextmanager
def frozen_heap():
    """Timing in the grader's process: the harness runs gc.collect() before every sample, which walks
    every long-lived object (pandas, SQLAlchemy, nbclient: ~0.1 s a time). Freezing them keeps the
    collections of each variant's own garbage and makes a speed check take seconds, not half a minute."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _first_error(burst: dict) -> str:
    index, exc = next(iter(sorted(burst["errors"].items())))
    return f"request {index + 1} raised {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------

def same_answers(ctx) -> CheckResult:
    with psycopg.connect(ctx.dsn) as conn:
        expected = [_normalise(conn.execute(ORDER_SUMMARY_SQL, (c,)).fetchone()) for c in CHECK_CUSTOMERS]
    handle, close = _open(ctx, ctx.dsn)
    try:
        for customer, want in zip(CHECK_CUSTOMERS, expected):
            got = _normalise(call_submitted(handle, customer, timeout=REQUEST_TIMEOUT))
            if got != want:
                return CheckResult.fail(
                    f"handle({customer}) returned {got}, the original handler returns {want}: keep the "
                    "query and its parameter exactly as they were; only where the connection comes from "
                    "should change")
    finally:
        _close(close)
    return CheckResult.ok(f"the same answers as the original for {len(CHECK_CUSTOMERS)} customers")


def few_connections(ctx) -> CheckResult:
    run = _concurrent_run(ctx)
    burst, opened = run["burst"], run["connections"]
    if burst["errors"] and len(burst["errors"]) == REQUESTS:
        raise SubmissionError(f"every request failed: {_first_error(burst)}")
    if opened > POOL_SIZE:
        return CheckResult.fail(
            f"the server saw {opened} connections for {REQUESTS} requests from {THREADS} threads; a pool of "
            f"POOL_SIZE = {POOL_SIZE} opens at most {POOL_SIZE} and lends them again and again. "
            + ("It looks like a connection per request: " if opened >= REQUESTS * 0.9 else
               "Is the pool bigger than POOL_SIZE, or created more than once? ") + POOL_HINT,
            connections=opened)
    return CheckResult.ok(f"{opened} connection(s) for {REQUESTS} requests from {THREADS} threads "
                          f"(at most {POOL_SIZE})", connections=opened)


def no_leaks(ctx) -> CheckResult:
    run = _concurrent_run(ctx)
    burst = run["burst"]
    if burst["unfinished"]:
        return CheckResult.fail(
            f"{burst['unfinished']} of {REQUESTS} requests were still waiting after {BURST_TIMEOUT:.0f} s: "
            "connections are borrowed and never given back, so the pool runs dry. Borrow with "
            "`with pool.connection() as conn:` (or call pool.putconn(conn) in a finally block)")
    if burst["errors"]:
        return CheckResult.fail(f"{len(burst['errors'])} of {REQUESTS} requests failed; {_first_error(burst)}. "
                                "A PoolTimeout means requests waited for connections that were never returned")
    stuck = [state for _, state in run["after_burst"] if state not in ("idle", None)]
    if stuck:
        return CheckResult.fail(
            f"after the requests, {len(stuck)} connection(s) sat on the server in state {stuck[0]!r}: a "
            "transaction was left open. Let the `with pool.connection()` block end (it commits), or use "
            "autocommit")
    if run["close_error"]:
        return CheckResult.fail(f"close() failed: {run['close_error']}")
    if run["after_close"]:
        return CheckResult.fail(
            f"after close(), {len(run['after_close'])} connection(s) were still open on the server: "
            "close() must close the pool (pool.close(), or engine.dispose())")
    return CheckResult.ok(f"all {REQUESTS} requests finished in {burst['seconds']:.1f} s; no open "
                          "transaction left behind; no connection left open after close()")


def faster_than_original(ctx) -> CheckResult:
    customer = 2  # a busy customer: the query does real work, as a request would
    apps = {"original": original_app(ctx.dsn), "reference": reference_app(ctx.dsn)}
    apps["submission"] = _open(ctx, ctx.dsn)
    try:
        with learner_code("handle"):
            call_submitted(apps["submission"][0], customer, timeout=REQUEST_TIMEOUT)
        calls = {name: (lambda h=app[0]: _normalise(h(customer))) for name, app in apps.items()}
        try:
            with frozen_heap():
                result = measure_gated(calls["original"], calls["reference"], calls["submission"])
        except WrongAnswer:
            return CheckResult.fail("handle() returns a different answer from the original, so its speed is "
                                    "not judged (see the correctness check)")
    finally:
        for name, (_, close) in apps.items():
            if name == "submission":
                _close(close)
            else:
                close()
    return speedup_verdict(result, "requests per second", "Borrowing from an open pool should cost "
                           "microseconds; opening a connection costs milliseconds. " + POOL_HINT)


LAB = LabSpec(
    id="05",
    title="Connection pooling",
    solution="05_connection_pooling.ipynb",
    cell_timeout=120,
    total_timeout=600,
    exercises=[
        Exercise("pool", "Borrow, don't connect", None, ["open_app"], [
            Check("the same answers as the original", same_answers, 2),
            Check(f"at most {POOL_SIZE} connections for {REQUESTS} concurrent requests", few_connections, 2),
            Check("no leaked connections", no_leaks, 1),
            Check("more requests per second than the original", faster_than_original, 1),
        ]),
    ],
)
