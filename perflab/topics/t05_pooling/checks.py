"""Lab 05 · Connection pooling — the grader's checks.

No learner code runs here. The learner's ``open_app(dsn) -> (handle, close)`` runs in the submission's
sandbox, driven by ``drivers.py`` (open the app on the sandbox's own role and clone, send requests from
8 threads, close it); the reference (the solution notebook's ``open_app``) and the original (the
starter the lab gives) run the same drivers in the reference sandbox.

Everything that decides a pass is measured from outside the sandbox, by role:

* **answers**: the submission's rows against the original's (sequential requests) and the reference's
  (the 200 concurrent ones);
* **connections**: before the 200 requests the grader ends every backend of the role (connections
  opened earlier, e.g. by a default argument at load time, are gone); the server's log
  (``log_connections``, by role) then counts every connection the submission opens, and a grader thread
  samples ``pg_stat_activity`` for the role's backends open at once;
* **work done**: the server's log shows one ``orders`` query per request (a cache that answers without
  asking the database is not a pool);
* **leaks**: every request answered (with a query the server saw), no backend of the role left inside
  a transaction, none left at all after ``close()``;
* **speed**: requests per second against the original, timed by the grader around each sandbox call
  (several requests per call, fresh customers each call; a call ends when its role's closed connections
  have left the server, so no variant pays for another's teardown), at least half of the reference's
  speed-up, and the server's log shows a query for every request timed.

The reference and the original come from the solution notebook (``ctx.reference_function`` /
``ctx.original_function``); the query and ``POOL_SIZE`` a recorded ``open_app`` may use are ``rig.NAMESPACE``.
"""
from __future__ import annotations

import random
import re
import threading
import time
from decimal import Decimal, InvalidOperation

from perflab import stack
from perflab.grading.contracts import WrongAnswer, measure_gated, speedup_decided, speedup_verdict
from perflab.grading.grader import Check, CheckResult, Exercise, Inconclusive, LabSpec, SubmissionError
from perflab.topics.t05_pooling.rig import POOL_SIZE

DRIVERS = "perflab.topics.t05_pooling.drivers"
REQUESTS = 200
THREADS = 8
# Customers 1 and 2 are the big tenants; the rest spread over quiet and busy ones; 999_999 has none.
CHECK_CUSTOMERS = [1, 2, 3, 17, 250, 1500, 1999, 999_999] + [1 + (i * 97) % 2000 for i in range(24)]
BURST_CUSTOMERS = [1 + (i * 37) % 2000 for i in range(REQUESTS)]  # 200 distinct customers
# A timed call sends this many requests (a few ms even through a pool), for customers drawn afresh for
# every call among the burst's customers with a typical number of orders: the middle half of them by order
# count, at any scale (3-8 orders each at `tiny`, 39-67 at `small`), so every draw is about the same work.
REQUESTS_PER_TIMED_CALL = 8
SETTLE_SECONDS = 0.25  # the most a timed call waits for its closed connections' backends to exit
REQUEST_TIMEOUT = 10.0  # seconds for one request; a pool's default checkout timeout is 30 s
BURST_TIMEOUT = 12.0
CALL_SLACK = 10.0  # the sandbox round trip and process start on top of the requests' own time
# A statement of the handler's query, as the server logs it (simple or extended protocol).
ORDERS_QUERY = re.compile(r"\bfrom\s+(?:public\.)?\"?orders\"?\b", re.I)

POOL_HINT = ("create one psycopg_pool.ConnectionPool(dsn, max_size=POOL_SIZE) in open_app, borrow with "
             "`with pool.connection() as conn:` in handle, and close the pool in close()")


# ------------------------------------------------------------------------------------------------
# Calling the three sides through the drivers
# ------------------------------------------------------------------------------------------------

def _driver(ctx, side: str, driver: str, timeout: float):
    """``open_app`` of ``side`` ("submission", "reference" or "original") through ``drivers.<driver>``."""
    target = f"{DRIVERS}:{driver}"
    if side == "submission":
        return ctx.function("open_app").via(target, timeout)
    if side == "reference":
        return ctx.reference_function("open_app").via(target, timeout)
    return ctx.original_function("open_app").via(target, timeout)


# The reference and the original share the reference sandbox's process: an app's name says whose it is.
def _open(ctx, side: str, name: str) -> None:
    _driver(ctx, side, "open_app", REQUEST_TIMEOUT + CALL_SLACK)(f"{side}/{name}")


def _handle(ctx, side: str, name: str, customers: list) -> list:
    return _driver(ctx, side, "handle", REQUEST_TIMEOUT * len(customers) + CALL_SLACK)(f"{side}/{name}",
                                                                                        list(customers))


def _close(ctx, side: str, name: str) -> str | None:
    """Close the app; the learner's failure to close is returned (a check reports it), others raise."""
    try:
        _driver(ctx, side, "close_app", REQUEST_TIMEOUT + CALL_SLACK)(f"{side}/{name}")
    except SubmissionError as exc:
        if side != "submission":
            raise
        return str(exc)
    return None


def _normalise(answer):
    """(count, total) as plain values: a list, a tuple or a Row (all JSON lists by now) compare alike."""
    try:
        count, total = answer
        return int(count), Decimal(str(total))
    except (TypeError, ValueError, InvalidOperation):
        raise SubmissionError(f"handle() should return the query's row (orders, total), got {answer!r:.120}") from None


def _original_answers(ctx) -> dict:
    """The original handler's rows for CHECK_CUSTOMERS (the starter, in the reference sandbox)."""
    if "original answers" not in ctx.scratch:
        _open(ctx, "original", "answers")
        try:
            rows = _handle(ctx, "original", "answers", CHECK_CUSTOMERS)
        finally:
            _close(ctx, "original", "answers")
        ctx.scratch["original answers"] = dict(zip(CHECK_CUSTOMERS, (_normalise(r) for r in rows)))
    return ctx.scratch["original answers"]


def _reference_answers(ctx) -> dict:
    """The reference's rows for every customer of the burst (the solution notebook, in its sandbox)."""
    if "reference answers" not in ctx.scratch:
        _open(ctx, "reference", "answers")
        try:
            rows = _handle(ctx, "reference", "answers", BURST_CUSTOMERS)
        finally:
            _close(ctx, "reference", "answers")
        ctx.scratch["reference answers"] = dict(zip(BURST_CUSTOMERS, (_normalise(r) for r in rows)))
    return ctx.scratch["reference answers"]


# ------------------------------------------------------------------------------------------------
# What the server sees of the submission's role (the grader's own admin connection)
# ------------------------------------------------------------------------------------------------

_BACKENDS = ("SELECT pid, state FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend' "
             "AND pid <> pg_backend_pid()")


def _backends(ctx) -> list[tuple]:
    with stack.connect(dsn=ctx.admin_dsn) as conn:
        return conn.execute(_BACKENDS, (ctx.role,)).fetchall()


def _end_backends(ctx, timeout: float = 5.0) -> None:
    """End every backend of the submission's role (a clean slate before counting) and wait until gone."""
    with stack.connect(dsn=ctx.admin_dsn) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (ctx.role,))
    _wait_for_no_backends(ctx, timeout)


def _wait_for_no_backends(ctx, timeout: float) -> list[tuple]:
    """The role's backends, polled until there are none or ``timeout`` passes (a closed connection's
    backend exits asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        left = _backends(ctx)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


class _BackendWatch:
    """Samples the role's backends in pg_stat_activity from a grader thread: the most alive at once."""

    def __init__(self, ctx, every: float = 0.005) -> None:
        self.ctx, self.every = ctx, every
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._conn = stack.connect(dsn=ctx.admin_dsn)

    def _run(self) -> None:
        while True:
            count = len(self._conn.execute(_BACKENDS, (self.ctx.role,)).fetchall())
            self.peak = max(self.peak, count)
            self.samples += 1
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> "_BackendWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


def _orders_queries(probe) -> int:
    return sum(1 for statement in probe.statements if ORDERS_QUERY.search(statement.sql))


def _concurrent_run(ctx) -> dict:
    """200 requests from 8 threads through the submission, counted server-side (shared by three checks)."""
    if "run" in ctx.scratch:
        return ctx.scratch["run"]
    expected = _reference_answers(ctx)
    ctx.sandbox("submission")  # started (and the learner's source loaded) before anything is counted
    _end_backends(ctx)
    run: dict = {"open_error": None, "close_error": None}
    with ctx.count_statements() as probe:
        with _BackendWatch(ctx) as watch:
            try:
                _open(ctx, "submission", "burst")
            except SubmissionError as exc:
                run["open_error"] = str(exc)
            if run["open_error"] is None:
                started = time.monotonic()
                try:
                    burst = _driver(ctx, "submission", "burst", BURST_TIMEOUT + CALL_SLACK)(
                        "submission/burst", BURST_CUSTOMERS, THREADS, BURST_TIMEOUT)
                    if _well_formed(burst):
                        run["burst"] = burst
                    else:
                        run["burst_error"] = "the sandbox sent back something that is not the driver's report"
                except SubmissionError as exc:
                    run["burst_error"] = str(exc)
                run["seconds"] = time.monotonic() - started
                run["after_burst"] = _backends(ctx)
        if run["open_error"] is None:
            run["close_error"] = _close(ctx, "submission", "burst")
            run["after_close"] = _wait_for_no_backends(ctx, 2.0)
    run["connections"] = probe.connections
    run["queries"] = _orders_queries(probe)
    run["peak_backends"] = watch.peak
    burst = run.get("burst")
    if burst is not None:
        answers, finished = burst["answers"], burst["finished"]
        right = wrong = 0
        first_wrong = None
        for i, customer in enumerate(BURST_CUSTOMERS):
            if i < len(finished) and finished[i] and i < len(answers):
                try:
                    ok = _normalise(answers[i]) == expected[customer]
                except SubmissionError:
                    ok = False
                if ok:
                    right += 1
                else:
                    wrong += 1
                    if first_wrong is None:
                        first_wrong = (customer, answers[i], expected[customer])
        run.update(right=right, wrong=wrong, first_wrong=first_wrong)
    ctx.scratch["run"] = run
    return run


def _well_formed(burst) -> bool:
    """The driver's report has its shape (the learner's code shares the sandbox: it may have replaced it)."""
    try:
        return (isinstance(burst, dict) and len(burst["answers"]) == len(burst["finished"]) == REQUESTS
                and isinstance(burst["unfinished"], int)
                and all(isinstance(i, int) and isinstance(m, str) for i, m in burst["errors"]))
    except (KeyError, TypeError, ValueError):
        return False


def _burst_or_raise(run: dict) -> dict:
    if run["open_error"]:
        raise SubmissionError(run["open_error"])
    if "burst_error" in run:
        raise SubmissionError(f"sending {REQUESTS} requests from {THREADS} threads failed: {run['burst_error']}")
    return run["burst"]


def _first_error(burst: dict) -> str:
    index, message = burst["errors"][0]
    return f"request {index + 1} raised {message}"


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------

def same_answers(ctx) -> CheckResult:
    expected = _original_answers(ctx)
    _open(ctx, "submission", "answers")
    try:
        rows = _handle(ctx, "submission", "answers", CHECK_CUSTOMERS)
    finally:
        close_error = _close(ctx, "submission", "answers")
    if not isinstance(rows, list) or len(rows) != len(CHECK_CUSTOMERS):
        raise SubmissionError(f"handle() answered {rows!r:.120} for {len(CHECK_CUSTOMERS)} requests")
    for customer, row in zip(CHECK_CUSTOMERS, rows):
        got, want = _normalise(row), expected[customer]
        if got != want:
            return CheckResult.fail(
                f"handle({customer}) returned {got}, the original handler returns {want}: keep the "
                "query and its parameter exactly as they were; only where the connection comes from "
                "should change")
    run = _concurrent_run(ctx)
    if run.get("wrong"):
        customer, got, want = run["first_wrong"]
        return CheckResult.fail(
            f"with {THREADS} threads at once, {run['wrong']} of {REQUESTS} answers were wrong (handle({customer}) "
            f"returned {got!r:.80}, expected {want}): a connection must serve one request at a time; borrow "
            "one per request from the pool")
    if close_error:
        return CheckResult.fail(f"the answers are right, but close() failed: {close_error}")
    return CheckResult.ok(f"the same answers as the original for {len(CHECK_CUSTOMERS)} customers, and as the "
                          f"reference for {run.get('right', 0)} concurrent requests")


def few_connections(ctx) -> CheckResult:
    run = _concurrent_run(ctx)
    burst = _burst_or_raise(run)
    opened, peak, queries = run["connections"], run["peak_backends"], run["queries"]
    counted = dict(connections=opened, peak_backends=peak, queries=queries)
    if run["right"] == 0:
        if burst["errors"]:
            raise SubmissionError(f"no request got its answer: {_first_error(burst)}")
        raise SubmissionError(f"none of the {REQUESTS} requests got its answer within {BURST_TIMEOUT:.0f} s")
    if opened > POOL_SIZE:
        return CheckResult.fail(
            f"the server saw {opened} connections for {REQUESTS} requests from {THREADS} threads; a pool of "
            f"POOL_SIZE = {POOL_SIZE} opens at most {POOL_SIZE} and lends them again and again. "
            + ("It looks like a connection per request: " if opened >= REQUESTS * 0.9 else
               "Is the pool bigger than POOL_SIZE, or created more than once? ") + POOL_HINT, **counted)
    if peak > POOL_SIZE:
        return CheckResult.fail(
            f"the server had {peak} connections of yours open at once while the requests ran (at most "
            f"POOL_SIZE = {POOL_SIZE} allowed): connections opened before the requests count too. " + POOL_HINT,
            **counted)
    if queries < run["right"]:
        return CheckResult.fail(
            f"{run['right']} requests were answered but the server ran only {queries} orders queries: each "
            "request must ask the database (a cache of answers is not a pool)", **counted)
    return CheckResult.ok(f"{opened} connection(s) opened, at most {peak} open at once, for {REQUESTS} requests "
                          f"from {THREADS} threads (at most {POOL_SIZE}), counted by the server", **counted)


def no_leaks(ctx) -> CheckResult:
    run = _concurrent_run(ctx)
    burst = _burst_or_raise(run)
    if burst["unfinished"]:
        return CheckResult.fail(
            f"{burst['unfinished']} of {REQUESTS} requests were still waiting after {BURST_TIMEOUT:.0f} s: "
            "connections are borrowed and never given back, so the pool runs dry. Borrow with "
            "`with pool.connection() as conn:` (or call pool.putconn(conn) in a finally block)")
    if burst["errors"]:
        return CheckResult.fail(f"{len(burst['errors'])} of {REQUESTS} requests failed; {_first_error(burst)}. "
                                "A PoolTimeout means requests waited for connections that were never returned")
    answered = run["right"] + run["wrong"]
    if answered < REQUESTS or run["queries"] < REQUESTS:
        return CheckResult.fail(
            f"of {REQUESTS} requests, {answered} came back with an answer and the server ran {run['queries']} "
            "orders queries: every request must be answered by a query")
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
    return CheckResult.ok(f"all {REQUESTS} requests answered in {run['seconds']:.1f} s, each by a query the server "
                          "ran; no open transaction left behind; no connection left open after close()")


def _typical_customers(expected: dict) -> list[int]:
    """The burst's customers with a typical number of orders: the middle half by count. (A fixed range of
    counts, 4-11, held no customer at `small`, where the burst's customers have 20 orders and more.)"""
    by_count = sorted(BURST_CUSTOMERS, key=lambda customer: (expected[customer][0], customer))
    quarter = len(by_count) // 4
    return by_count[quarter:len(by_count) - quarter]


def faster_than_original(ctx) -> CheckResult:
    expected = _reference_answers(ctx)
    universe = _typical_customers(expected)
    draws = iter(range(1, 1 << 30))  # a fresh set of customers for every timed call, of every variant
    wrong_later: list[str] = []
    submitted = {"requests": 0}
    first = {"original": True, "reference": True, "submission": True}

    def timed(side: str):
        remote = _driver(ctx, side, "handle", REQUEST_TIMEOUT * REQUESTS_PER_TIMED_CALL + CALL_SLACK)

        def call():
            draw = 0 if first[side] else next(draws)  # each side's first call is the harness's answer check
            first[side] = False
            customers = random.Random(draw).sample(universe, REQUESTS_PER_TIMED_CALL)
            rows = remote(f"{side}/speed", customers)
            settle(side)
            if side == "submission":
                submitted["requests"] += len(customers)
            got = [_normalise(r) for r in rows] if isinstance(rows, list) else rows
            want = [expected[c] for c in customers]
            if got == want:
                return True
            if draw:
                wrong_later.append(f"{side} answered {got!r:.100} for customers {customers}")
            return f"{got!r:.200} for customers {customers}"

        call.__name__ = side
        return call

    # A closed connection's backend exits after the client has gone, on the same two cores: its cost would
    # land on whichever call is timed next. Each timed call therefore ends once its role has no more
    # backends than before the timing began (for a pool: at once), so every call pays its own teardown.
    roles = {"original": ctx.reference_role, "reference": ctx.reference_role, "submission": ctx.role}
    backends_sql = ("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND backend_type = 'client backend'")
    baseline: dict[str, int] = {}

    def settle(side: str) -> None:
        if side not in baseline:
            return
        deadline = time.monotonic() + SETTLE_SECONDS
        while admin.execute(backends_sql, (roles[side],)).fetchone()[0] > baseline[side] and \
                time.monotonic() < deadline:
            time.sleep(0.001)

    sides = ("original", "reference", "submission")
    opened = []
    admin = stack.connect(dsn=ctx.admin_dsn)
    try:
        for side in sides:
            _open(ctx, side, "speed")
            opened.append(side)
        calls = {side: timed(side) for side in sides}
        for side in sides:
            calls[side]()  # warm: each pool holds what it will hold while timed
            first[side] = True
        for side in sides:
            baseline[side] = admin.execute(backends_sql, (roles[side],)).fetchone()[0]
        submitted["requests"] = 0
        noisy = None
        with ctx.count_statements() as probe:
            try:
                result = measure_gated(calls["original"], calls["reference"], calls["submission"],
                                       decided=speedup_decided())
            except WrongAnswer:
                return CheckResult.fail("handle() returns a different answer from the original, so its speed is "
                                        "not judged (see the correctness check)")
            except Inconclusive as exc:
                noisy = exc  # the server's count below still judges whether the work happened
    finally:
        admin.close()
        for side in opened:
            _close(ctx, side, "speed")
    if wrong_later:
        return CheckResult.fail(f"while being timed, a wrong answer came back ({wrong_later[0]}): its speed is "
                                "not judged")
    queries = _orders_queries(probe)
    if queries < submitted["requests"]:
        return CheckResult.fail(
            f"while being timed, handle() answered {submitted['requests']} requests but the server ran only "
            f"{queries} orders queries: a faster answer that skips the database is not what is timed here; "
            "each request must run its query", queries=queries, requests=submitted["requests"])
    if noisy is not None:
        raise noisy
    return speedup_verdict(result, "requests per second", "Borrowing from an open pool should cost "
                           "microseconds; opening a connection costs milliseconds. " + POOL_HINT)


LAB = LabSpec(
    id="05",
    title="Connection pooling",
    solution="05_connection_pooling.ipynb",
    cell_timeout=120,
    total_timeout=600,
    namespace="perflab.topics.t05_pooling.rig:NAMESPACE",
    exercises=[
        Exercise("pool", "Borrow, don't connect", None, ["open_app"], [
            Check("the same answers as the original", same_answers, 2),
            Check(f"at most {POOL_SIZE} connections for {REQUESTS} concurrent requests", few_connections, 2),
            Check("no leaked connections", no_leaks, 1),
            Check("more requests per second than the original", faster_than_original, 1),
        ]),
    ],
)
