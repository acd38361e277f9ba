"""What lab 06's notebook, its checks and its drivers share: the concurrency limit, and the notebook's
experiment sizes and measuring preset (kept here so that the lesson's cells hold the lesson).

``NAMESPACE`` is what a recorded ``fetch_all`` may use without importing it (the grader re-creates the
learner's function from its source in a sandbox whose scope is pre-filled with this dict).
"""
from __future__ import annotations

import asyncio

LIMIT = 10

# How long the service takes per request, and how big the experiments are. `tiny` keeps the whole
# notebook well under a minute (it runs in the test suite), with a short latency; `small` and `full`
# use the lab's 50 ms and 200 calls, and 100 ms for the article's 10-call example (half the article's
# 200 ms: the loop's 10 latencies against gather's one give the same ~10x, in half the time). The
# limit sweep starts at 10: at 200 calls a limit of 5 is 40 waves, 2 s per sample, and adds nothing
# to the curve that limit 10 does not show. (The scale of the course data matters only for the
# database section; nothing here needs `full`'s size.)
# The CPU-bound jobs of section 9 are 10 ms each at `small` (5 at `tiny`): "a few ms", as the
# lesson says; what it shows (gather = the loop, the loop blocked for the whole batch) does not depend
# on the jobs' length, and ten jobs of 25 ms made that comparison the notebook's slowest but two.
TINY = dict(latency_ms=15, claim_latency_ms=20, sizes=[1, 3, 10, 30, 100], limit_n=100,
            limits=[10, 20, 50, 100], cap_n=250, db_n=50, cpu_ms=5)
LARGER = dict(latency_ms=50, claim_latency_ms=100, sizes=[1, 3, 10, 30, 100, 300], limit_n=200,
              limits=[10, 20, 50, 100, 200], cap_n=300, db_n=200, cpu_ms=10)


def settings(scale: str) -> dict:
    """The notebook's experiment sizes for a course scale (a copy: the notebook may change it)."""
    return dict(TINY if scale == "tiny" else LARGER)


# A fan-out against the slow service is latency-bound: its wall time barely varies from one run to
# the next, so the course preset's 10 rounds and its 15 s budget only add minutes to the sweeps, one
# whole fan-out per sample. The sweeps and the database comparison take 6 interleaved rounds (the
# harness's floor: the median's 95% CI is then [min, max]), more only while a 1.5 s budget per
# comparison allows. The 10-call claim keeps the preset's 10 rounds: its verdict reads the ratio's CI
# against 10x, and 6 rounds widened it from 9.8x-9.9x to 9.4x-10.1x.
FAN_OUT_BUDGET_S = 1.5
FAN_OUT_ROUNDS = 6
# The CPU-bound comparison (ratios near 1) keeps its 10 rounds; the budget only stops it adding more.
CPU_BUDGET_S = 5.0


def preset(min_rounds: int | None = None, budget_seconds: float | None = None, fewest_rounds: int | None = None):
    """The preset the notebook measures with.

    Each sample here is one whole fan-out (tens or hundreds of ms): under the `fast` preset the rounds
    are capped at the minimum, 6, so that the sweeps fit the test budget; other presets are used as
    is. ``min_rounds``: at least that many rounds (ratios near 1 need more samples than big ones).
    ``budget_seconds``: at most this time budget per comparison (never above the preset's own; the
    preset's ``min_rounds`` are still run). ``fewest_rounds``: the course's `default` preset runs only
    this many rounds (never below the harness's floor of 6) before its budget decides; `rigorous` keeps
    its own minimum.
    """
    from perflab import harness  # the grader's sandbox imports NAMESPACE only: keep this module light

    chosen = harness.resolve_preset()
    if chosen.name == "fast":
        chosen = chosen.derived("fast, 6 rounds", min_rounds=6, max_rounds=6, budget_seconds=1.5)
    if fewest_rounds is not None and chosen.name == "default" and chosen.min_rounds > fewest_rounds:
        fewest = max(fewest_rounds, harness.MIN_ROUNDS_FLOOR)
        chosen = chosen.derived(f"{chosen.name}, from {fewest} rounds", min_rounds=fewest)
    if budget_seconds is not None and budget_seconds < chosen.budget_seconds:
        chosen = chosen.derived(f"{chosen.name}, {budget_seconds:g} s budget", budget_seconds=budget_seconds)
    if min_rounds is None or chosen.min_rounds >= min_rounds:
        return chosen
    return chosen.derived(f"{chosen.name.split(',')[0]}, {min_rounds} rounds", min_rounds=min_rounds,
                          max_rounds=min_rounds)


NAMESPACE = {"LIMIT": LIMIT, "asyncio": asyncio}


# --------------------------------------------------------------------------------------------------
# Section 7, the database: the queries, and the plumbing around the lesson's four variants (open a
# pool and a connection in the harness's loop, time the variants at each RTT, count what the server ran).
# --------------------------------------------------------------------------------------------------

PER_CUSTOMER = "SELECT count(*), coalesce(sum(total), 0)::float8 FROM orders WHERE customer_id = %s"
ALL_AT_ONCE = ("SELECT count(o.id), coalesce(sum(o.total), 0)::float8 "
               "FROM unnest(%s::bigint[]) WITH ORDINALITY AS c(id, position) "
               "LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.position ORDER BY c.position")
DB_POOL_SIZE = 10


def customers(n: int) -> list[int]:
    """``n`` customer ids spread over ids 2-999 (the same list at every run).

    Customer 1 is left out: it is topic 03's big tenant, a third of all orders, so its aggregate alone
    took ~200 ms at `small` and every variant, one query included, was mostly that one customer's scan
    instead of the section's "one small aggregate per customer"."""
    return [2 + (i * 37) % 998 for i in range(n)]


async def open_database(dsn: str, pool_size: int = DB_POOL_SIZE):
    """``(pool, conn)``: an AsyncConnectionPool of ``pool_size`` and one connection, both autocommit."""
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(dsn, min_size=pool_size, max_size=pool_size, open=False,
                               kwargs={"autocommit": True})
    await pool.open(wait=True)
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    return pool, conn


async def close_database(pool, conn) -> None:
    await pool.close()
    await conn.close()


def database_comparison(variants_for, dsn: str, args: tuple, preset):
    """``compare(variants_for(pool, conn), args)`` on a pool and a connection opened for the run."""
    from perflab import harness

    pool, conn = harness.run_async(open_database(dsn))
    try:
        return harness.compare(variants_for(pool, conn), args=args, preset=preset)
    finally:
        harness.run_async(close_database(pool, conn))


def database_fan_out(variants_for, dsn: str, args: tuple, preset, rtts=(0, 2)) -> dict:
    """``{rtt_ms: Comparison}``: the variants timed with the database ``rtt_ms`` away (0: directly)."""
    from urllib.parse import urlsplit

    from perflab import stack

    dbname = urlsplit(dsn).path.lstrip("/")
    results = {}
    for rtt in rtts:
        if rtt == 0:
            results[rtt] = database_comparison(variants_for, dsn, args, preset)
            continue
        with stack.latency_proxy(rtt_ms=rtt) as proxy:
            results[rtt] = database_comparison(variants_for, proxy.dsn(dbname), args, preset)
    return results


def database_counts(variants_for, dsn: str, args: tuple) -> dict:
    """Per variant, the statements the server executed and on how many connections (from its own log).

    The pool opens all its connections whichever variant runs: only those that ran statements count.
    """
    from perflab import harness, probes

    counts = {}
    labels = harness.normalise_variants(variants_for(None, None))
    for index, label in enumerate(labels):
        with probes.count_statements(dsn) as probe:
            pool, conn = harness.run_async(open_database(probe.dsn))
            try:
                harness.run_async(variants_for(pool, conn)[index](*args))
            finally:
                harness.run_async(close_database(pool, conn))
        counts[label] = {"statements": probe.count,
                         "connections that ran them": len({s.session for s in probe.statements})}
    return counts


def database_table(results: dict, counts: dict):
    """Medians per RTT beside the server's counts, one row per variant."""
    import pandas as pd

    medians = pd.DataFrame({f"median at {rtt} ms RTT (ms)": result.summary.set_index("variant").median_ms
                            for rtt, result in results.items()})
    return medians.join(pd.DataFrame(counts).T).round(2)


# --------------------------------------------------------------------------------------------------
# Sections 5 and 8: watching what a failing fan-out leaves running, and sizing a CPU-bound job.
# --------------------------------------------------------------------------------------------------

async def after_the_error(attempt, session, service_url: str, settle: float) -> dict:
    """Run ``attempt()``; when it returns or raises, note the time and the server's request count,
    wait ``settle`` seconds (every call still running finishes) and count again."""
    import time

    async def server_requests():
        async with session.get(f"{service_url}/stats") as response:
            return (await response.json())["requests"]

    started = time.perf_counter()
    try:
        await attempt()
        outcome = "returned"
    except Exception as error:  # an ExceptionGroup from a TaskGroup is an Exception too
        outcome = f"raised {type(error).__name__}"
    raised_after = time.perf_counter() - started
    at_error = await server_requests()
    await asyncio.sleep(settle)
    return {"outcome": outcome, "ms until it returned/raised": round(raised_after * 1e3, 1),
            "requests received by then": at_error, f"{settle:.1f} s later": await server_requests()}


def calibrate(fn, target_s: float, n: int = 100_000, at_least: int = 10_000) -> int:
    """The ``n`` for which ``fn(n)`` takes about ``target_s`` on this machine (best of 3: noise only adds)."""
    import time

    def seconds_for(size):
        started = time.perf_counter()
        fn(size)
        return time.perf_counter() - started

    return max(at_least, int(n * target_s / min(seconds_for(n) for _ in range(3))))
