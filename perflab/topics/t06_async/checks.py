"""Lab 06 · Sequential calls vs asyncio.gather — the grader's checks.

The learner's ``async def fetch_all(session, base_url, ids)`` is re-created here and run in an event
loop this module creates, against a fresh ``perflab.slowservice`` (its own process). Correctness: every
item, in the order of ``ids``. Performance contract, from counters first: the most requests the
*server* saw in flight (at most ``LIMIT``, and close to it); then wall time against the physical
floor ``ceil(N / LIMIT) × latency``, with the reference answer timed in the same run as a noise gate
(if the reference itself cannot get within the bound, the run is inconclusive, not failed). Failures:
with some items answering HTTP 500, the others must all come back and the failed ones be ``None``.
"""
from __future__ import annotations

import asyncio
import math
import time

from perflab.topics.t06_async import slowservice
from perflab.grading.grader import Check, CheckResult, Exercise, Inconclusive, LabSpec, SubmissionError, call_submitted

LIMIT = 10
N_ITEMS = 200
LATENCY_MS = 50.0
WALL_BOUND = 1.3  # × the ideal for LIMIT in flight
CLOSE_TO_LIMIT = 8  # the server must have seen at least this many at once
RUN_TIMEOUT_FACTOR = 3.0  # a run is cancelled after this × the ideal (a sequential answer takes 20×)
FAILURE_RATE = 0.1
SEED = 5
# A shuffled order: results must follow `ids`, not the order the answers arrive in.
IDS = [(i * 73) % 1000 + 1 for i in range(N_ITEMS)]

NAMESPACE = {"LIMIT": LIMIT, "asyncio": asyncio}
HINT = ("Bound the concurrency with an asyncio.Semaphore(LIMIT) taken around each request, and gather "
        "one task per id: gather keeps the results in the order of its arguments")


async def reference_fetch_all(session, base_url, ids):
    limit = asyncio.Semaphore(LIMIT)

    async def fetch(item_id):
        async with limit:
            async with session.get(f"{base_url}/items/{item_id}") as response:
                response.raise_for_status()
                return await response.json()

    results = await asyncio.gather(*(fetch(i) for i in ids), return_exceptions=True)
    return [None if isinstance(r, Exception) else r for r in results]


def _ideal_seconds() -> float:
    return math.ceil(N_ITEMS / LIMIT) * LATENCY_MS / 1000


def _run(fetch_all, service: slowservice.SlowService) -> dict:
    """One call of fetch_all in a fresh event loop; the server's counters for exactly that call."""
    import aiohttp

    timeout = RUN_TIMEOUT_FACTOR * _ideal_seconds()

    async def drive():
        # No connection limit on the session: the bound must come from the answer itself.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            started = time.perf_counter()
            try:
                results = await asyncio.wait_for(fetch_all(session, service.url, list(IDS)), timeout)
            except asyncio.TimeoutError:
                return {"timed_out": True, "seconds": time.perf_counter() - started}
            return {"timed_out": False, "results": results, "seconds": time.perf_counter() - started}

    def fetch_all_in_a_new_loop():
        return asyncio.run(drive())

    fetch_all_in_a_new_loop.__name__ = getattr(fetch_all, "__name__", "fetch_all")
    service.reset()
    outcome = call_submitted(fetch_all_in_a_new_loop, timeout=timeout + 15)
    time.sleep(0.05)  # let cancelled requests finish on the server before reading its counters
    outcome.update(service.stats())
    return outcome


def _learner(ctx):
    fetch_all = ctx.function("fetch_all", NAMESPACE)
    if not asyncio.iscoroutinefunction(fetch_all):
        raise SubmissionError("fetch_all should be a coroutine function: `async def fetch_all(session, base_url, ids):`")
    return fetch_all


def _clean_runs(ctx) -> dict:
    """The submission (twice) and the reference (once), no failures injected; shared by three checks."""
    if "clean" not in ctx.scratch:
        fetch_all = _learner(ctx)
        with slowservice.running(latency_ms=LATENCY_MS) as service:
            runs = [_run(fetch_all, service)]
            reference = _run(reference_fetch_all, service)
            runs.append(_run(fetch_all, service))
        ctx.scratch["clean"] = {"runs": runs, "reference": reference}
    return ctx.scratch["clean"]


def _describe(result) -> str:
    text = repr(result)
    return text if len(text) < 160 else text[:159] + "…"


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------

def correct_and_in_order(ctx) -> CheckResult:
    run = _clean_runs(ctx)["runs"][0]
    if run["timed_out"]:
        return CheckResult.fail(
            f"fetch_all did not finish within {RUN_TIMEOUT_FACTOR:g} × the ideal time "
            f"({run['seconds']:.1f} s) so its answers could not be checked: one request at a time takes "
            f"{N_ITEMS} × {LATENCY_MS:g} ms = {N_ITEMS * LATENCY_MS / 1000:g} s. {HINT}")
    results = run["results"]
    expected = [slowservice.item_value(i) for i in IDS]
    if not isinstance(results, list) or len(results) != len(expected):
        length = len(results) if hasattr(results, "__len__") else "no"
        return CheckResult.fail(f"fetch_all should return a list with one item per id ({len(expected)}); "
                                f"it returned {type(results).__name__} with {length} elements")
    wrong = [i for i, (got, want) in enumerate(zip(results, expected)) if got != want]
    if wrong:
        first = wrong[0]
        if sorted(map(str, results)) == sorted(map(str, expected)):
            return CheckResult.fail(
                f"every item came back, but not in the order of ids (position {first}: id {IDS[first]} expected, "
                f"got {_describe(results[first])}): asyncio.as_completed yields in finishing order; "
                "asyncio.gather keeps the order of its arguments")
        return CheckResult.fail(f"{len(wrong)} of {len(expected)} results are wrong; the first at position {first} "
                                f"(id {IDS[first]}): expected {expected[first]}, got {_describe(results[first])}")
    return CheckResult.ok(f"all {len(expected)} items, in the order of ids")


def bounded_in_flight(ctx) -> CheckResult:
    runs = _clean_runs(ctx)["runs"]
    peak = max(run["max_in_flight"] for run in runs)
    low = min(run["max_in_flight"] for run in runs)
    if peak > LIMIT:
        return CheckResult.fail(
            f"the service saw {peak} requests in flight at once; the limit is {LIMIT}. An unbounded gather "
            f"starts every request at once: the dependency you call (and its rate limit) sees a burst of "
            f"{N_ITEMS}. {HINT}", max_in_flight=peak)
    if low < CLOSE_TO_LIMIT:
        return CheckResult.fail(
            f"the service saw at most {low} request(s) in flight; with a limit of {LIMIT} it should see close to "
            f"{LIMIT} (at least {CLOSE_TO_LIMIT}): requests are still waiting for each other. {HINT}",
            max_in_flight=low)
    return CheckResult.ok(f"the service saw at most {peak} requests in flight (limit {LIMIT})", max_in_flight=peak)


def near_ideal_time(ctx) -> CheckResult:
    clean = _clean_runs(ctx)
    ideal = _ideal_seconds()
    bound = WALL_BOUND * ideal
    if any(run["timed_out"] for run in clean["runs"]):
        return CheckResult.fail(
            f"fetch_all was stopped after {RUN_TIMEOUT_FACTOR * ideal:.1f} s; the best possible with {LIMIT} in "
            f"flight is {ideal:.1f} s ({N_ITEMS} × {LATENCY_MS:g} ms / {LIMIT}), and {bound:.1f} s is allowed. {HINT}")
    best = min(run["seconds"] for run in clean["runs"])
    reference = clean["reference"]["seconds"]
    if best <= bound:
        return CheckResult.ok(f"{best:.2f} s for {N_ITEMS} items: {ideal / best:.0%} of the ideal "
                              f"{ideal:.2f} s (reference: {reference:.2f} s)", seconds=best)
    if reference > bound:
        raise Inconclusive(f"the reference answer itself took {reference:.2f} s, over the {bound:.2f} s bound: "
                           "this machine was too busy to judge speed; rerun the grader")
    return CheckResult.fail(
        f"{best:.2f} s for {N_ITEMS} items; with {LIMIT} in flight the ideal is {ideal:.2f} s and at most "
        f"{bound:.2f} s is allowed (the reference took {reference:.2f} s). Waiting for a whole batch of "
        f"{LIMIT} before starting the next leaves slots idle: a semaphore starts a request as soon as "
        "any other finishes", seconds=best)


def survives_failures(ctx) -> CheckResult:
    fetch_all = _learner(ctx)
    with slowservice.running(latency_ms=LATENCY_MS, failure_rate=FAILURE_RATE, seed=SEED) as service:
        try:
            run = _run(fetch_all, service)
        except SubmissionError as exc:
            return CheckResult.fail(
                f"with some items failing (HTTP 500), fetch_all raised instead of returning the others: {exc}. "
                "Use asyncio.gather(..., return_exceptions=True) (or catch the error per item) and put None "
                "in place of a failed item")
        expected = [service.expected(i) for i in IDS]
    failing = sum(e is None for e in expected)
    if run["timed_out"]:
        return CheckResult.fail("with failures injected, fetch_all did not finish in time")
    results = run["results"]
    if not isinstance(results, list) or len(results) != len(expected):
        return CheckResult.fail(f"with {failing} items failing, fetch_all should still return {len(expected)} "
                                f"results (None for each failed one); it returned {_describe(results)}")
    lost = [i for i, (got, want) in enumerate(zip(results, expected)) if want is not None and got != want]
    if lost:
        return CheckResult.fail(f"{len(lost)} items that did not fail are missing or wrong (first: id "
                                f"{IDS[lost[0]]} at position {lost[0]}, got {_describe(results[lost[0]])}): one "
                                "failure must not lose the others")
    not_none = [i for i, (got, want) in enumerate(zip(results, expected)) if want is None and got is not None]
    if not_none:
        return CheckResult.fail(f"id {IDS[not_none[0]]} failed (HTTP 500) but its place holds "
                                f"{_describe(results[not_none[0]])}; put None there")
    return CheckResult.ok(f"{failing} of {len(expected)} items failed (HTTP 500) and came back as None; "
                          "all the others are there, in order")


LAB = LabSpec(
    id="06",
    title="Sequential calls vs asyncio.gather",
    solution="06_async_gather.ipynb",
    needs_database=False,
    cell_timeout=120,
    total_timeout=600,
    exercises=[
        Exercise("fetch_all", "Fetch 200 items, at most 10 at a time", None, ["fetch_all"], [
            Check("every item, in order", correct_and_in_order, 2),
            Check(f"at most {LIMIT} in flight, and close to {LIMIT}", bounded_in_flight, 2),
            Check(f"within {WALL_BOUND:g} × the ideal time for {LIMIT} in flight", near_ideal_time, 1),
            Check("failed items don't lose the others", survives_failures, 1),
        ]),
    ],
)
