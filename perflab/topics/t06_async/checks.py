"""Lab 06 · Sequential calls vs asyncio.gather — the grader's checks.

No learner code runs here. The learner's ``async def fetch_all(session, base_url, ids)`` runs in the
submission's sandbox, driven by ``drivers.py`` (a fresh event loop and an unlimited aiohttp session);
the reference (the solution notebook's ``fetch_all``) runs the same driver in the reference sandbox.

Both call a slow service that the GRADER starts and owns (its own process, as the grader's user): its
only HTTP route is ``/items/{id}``; its counters are read and reset, and its settings changed, over its
stdin/stdout pipe, which only the grader holds. Its items carry a secret salt and, in the failure run,
a secret seed picks the failing items, so an answer is right only if it came from the service.

* **correct**: every item, in the order of ``ids`` (salted values), and the service received a request
  for every id;
* **in flight**: the most requests the *service* saw at once, at most ``LIMIT`` and close to it;
* **time**: wall time measured by the grader around the sandbox call, within ``WALL_BOUND`` × the
  physical floor ``ceil(N / LIMIT) × latency`` and never below that floor (faster than physics means
  the work did not happen); the reference, timed alike in the same run, is the noise gate;
* **failures**: with some items answering HTTP 500, the others all come back and the failed ones are
  ``None``.
"""
from __future__ import annotations

import math
import secrets
import time

from perflab.grading.grader import Check, CheckResult, Exercise, Inconclusive, LabSpec, SubmissionError
from perflab.topics.t06_async import slowservice
from perflab.topics.t06_async.rig import LIMIT

DRIVERS = "perflab.topics.t06_async.drivers"
N_ITEMS = 200
LATENCY_MS = 50.0
WALL_BOUND = 1.3  # × the ideal for LIMIT in flight
SAME_AS_REFERENCE = 1.1  # over the bound but within this × the reference's own time: too busy to judge
FLOOR_SHARE = 0.95  # a run faster than this share of the physical floor did not do the work
CLOSE_TO_LIMIT = 8  # the server must have seen at least this many at once
RUN_TIMEOUT_FACTOR = 3.0  # a run is cancelled after this × the ideal (a sequential answer takes 20×)
CALL_SLACK = 15.0  # seconds for the sandbox itself on top of a run's own timeout
FAILURE_RATE = 0.1
FAILING_ITEMS = range(10, 31)  # a secret seed is drawn until this many of the ids fail
# A shuffled order: results must follow `ids`, not the order the answers arrive in.
IDS = [(i * 73) % 1000 + 1 for i in range(N_ITEMS)]

HINT = ("Bound the concurrency with an asyncio.Semaphore(LIMIT) taken around each request, and gather "
        "one task per id: gather keeps the results in the order of its arguments")


def _ideal_seconds() -> float:
    return math.ceil(N_ITEMS / LIMIT) * LATENCY_MS / 1000


def _remote(ctx, side: str, driver: str, timeout: float):
    target = f"{DRIVERS}:{driver}"
    if side == "submission":
        return ctx.function("fetch_all").via(target, timeout)
    return ctx.reference_function("fetch_all").via(target, timeout)


def _service(**settings) -> slowservice.SlowService:
    """The grader's own slow service: /items only, a secret salt, settings sent over its pipe."""
    service = slowservice.start(LATENCY_MS, http_control=False, salt=secrets.token_hex(16))
    if settings:
        service.configure(**settings)
    return service


def _run(ctx, side: str, service: slowservice.SlowService) -> dict:
    """One call of fetch_all in a fresh event loop in ``side``'s sandbox, timed here; the service's
    counters for exactly that call, read over the grader's pipe."""
    warmed = ctx.scratch.setdefault("warmed", set())
    if side not in warmed:  # start the sandbox and import aiohttp there before anything is timed
        _remote(ctx, side, "ready", 60)()
        warmed.add(side)
    timeout = RUN_TIMEOUT_FACTOR * _ideal_seconds()
    service.reset()
    started = time.perf_counter()
    outcome: dict = {}
    try:
        reply = _remote(ctx, side, "fetch_all", timeout + CALL_SLACK)(service.url, list(IDS), timeout)
        if isinstance(reply, dict) and isinstance(reply.get("timed_out"), bool):
            outcome = {"timed_out": reply["timed_out"], "results": reply.get("results")}
        else:
            outcome = {"error": "the sandbox sent back something that is not the driver's report"}
    except SubmissionError as exc:
        outcome = {"error": str(exc)}
    outcome["seconds"] = time.perf_counter() - started
    time.sleep(0.05)  # let cancelled requests finish on the server before reading its counters
    if not service.alive():
        raise SubmissionError("the grader's slow service stopped answering while fetch_all ran; it must be "
                              "left alone")
    stats = service.stats(ids=True)
    outcome.update(max_in_flight=stats["max_in_flight"], requests=stats["requests"], ids=stats["ids"],
                   missing=sorted(set(IDS) - set(stats["ids"])))
    return outcome


def _clean_runs(ctx) -> dict:
    """The submission (twice) and the reference (once), no failures injected; shared by three checks."""
    if "clean" not in ctx.scratch:
        service = _service()
        try:
            runs = [_run(ctx, "submission", service)]
            reference = _run(ctx, "reference", service)
            runs.append(_run(ctx, "submission", service))
            expected = [service.expected(i) for i in IDS]
        finally:
            service.close()
        ctx.scratch["clean"] = {"runs": runs, "reference": reference, "expected": expected}
    return ctx.scratch["clean"]


def _raise_errors(runs: list[dict]) -> None:
    for run in runs:
        if "error" in run:
            raise SubmissionError(run["error"])


def _describe(result) -> str:
    text = repr(result)
    return text if len(text) < 160 else text[:159] + "…"


def _not_all_requested(run: dict) -> str | None:
    if run["missing"]:
        return (f"the service never received a request for {len(run['missing'])} of the {N_ITEMS} ids (e.g. id "
                f"{run['missing'][0]}): every item must be fetched from the service at base_url")
    return None


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------

def correct_and_in_order(ctx) -> CheckResult:
    clean = _clean_runs(ctx)
    run = clean["runs"][0]
    _raise_errors([run])
    if run["timed_out"]:
        return CheckResult.fail(
            f"fetch_all did not finish within {RUN_TIMEOUT_FACTOR:g} × the ideal time "
            f"({run['seconds']:.1f} s) so its answers could not be checked: one request at a time takes "
            f"{N_ITEMS} × {LATENCY_MS:g} ms = {N_ITEMS * LATENCY_MS / 1000:g} s. {HINT}")
    results = run["results"]
    expected = clean["expected"]
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
    if (problem := _not_all_requested(run)) is not None:
        return CheckResult.fail(problem)
    return CheckResult.ok(f"all {len(expected)} items, in the order of ids, each fetched from the service")


def bounded_in_flight(ctx) -> CheckResult:
    runs = _clean_runs(ctx)["runs"]
    _raise_errors(runs)
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
    for run in runs:
        if (problem := _not_all_requested(run)) is not None:
            return CheckResult.fail(problem, max_in_flight=peak)
    return CheckResult.ok(f"the service saw at most {peak} requests in flight (limit {LIMIT})", max_in_flight=peak)


def near_ideal_time(ctx) -> CheckResult:
    clean = _clean_runs(ctx)
    _raise_errors(clean["runs"])
    ideal = _ideal_seconds()
    bound = WALL_BOUND * ideal
    if any(run["timed_out"] for run in clean["runs"]):
        return CheckResult.fail(
            f"fetch_all was stopped after {RUN_TIMEOUT_FACTOR * ideal:.1f} s; the best possible with {LIMIT} in "
            f"flight is {ideal:.1f} s ({N_ITEMS} × {LATENCY_MS:g} ms / {LIMIT}), and {bound:.1f} s is allowed. {HINT}")
    for run in clean["runs"]:
        if (problem := _not_all_requested(run)) is not None:
            return CheckResult.fail(f"its speed is not judged: {problem}")
    best = min(run["seconds"] for run in clean["runs"])
    reference = clean["reference"]["seconds"]
    if best < FLOOR_SHARE * ideal:
        return CheckResult.fail(
            f"{best:.2f} s for {N_ITEMS} items is faster than physically possible with at most {LIMIT} in flight "
            f"({ideal:.2f} s: {math.ceil(N_ITEMS / LIMIT)} waves of {LATENCY_MS:g} ms): the requests did not all "
            f"happen as asked", seconds=best)
    if best <= bound:
        return CheckResult.ok(f"{best:.2f} s for {N_ITEMS} items: {ideal / best:.0%} of the ideal "
                              f"{ideal:.2f} s (reference: {reference:.2f} s)", seconds=best)
    if reference > bound:
        raise Inconclusive(f"the reference answer itself took {reference:.2f} s, over the {bound:.2f} s bound: "
                           "this machine was too busy to judge speed; rerun the grader")
    if best <= SAME_AS_REFERENCE * reference:
        raise Inconclusive(f"{best:.2f} s, over the {bound:.2f} s bound, but the reference answer took "
                           f"{reference:.2f} s in the same run: this machine was too busy to tell them apart; "
                           "rerun the grader")
    return CheckResult.fail(
        f"{best:.2f} s for {N_ITEMS} items; with {LIMIT} in flight the ideal is {ideal:.2f} s and at most "
        f"{bound:.2f} s is allowed (the reference took {reference:.2f} s). Waiting for a whole batch of "
        f"{LIMIT} before starting the next leaves slots idle: a semaphore starts a request as soon as "
        "any other finishes", seconds=best)


def _secret_failure_seed() -> int:
    """A seed nobody can know in advance, under which a fair share of the ids fail."""
    while True:
        seed = secrets.randbelow(2**31)
        if sum(slowservice.item_fails(i, FAILURE_RATE, seed) for i in IDS) in FAILING_ITEMS:
            return seed


def survives_failures(ctx) -> CheckResult:
    service = _service(failure_rate=FAILURE_RATE, seed=_secret_failure_seed())
    try:
        run = _run(ctx, "submission", service)
        expected = [service.expected(i) for i in IDS]
    finally:
        service.close()
    if "error" in run:
        return CheckResult.fail(
            f"with some items failing (HTTP 500), fetch_all raised instead of returning the others: {run['error']}. "
            "Use asyncio.gather(..., return_exceptions=True) (or catch the error per item) and put None "
            "in place of a failed item")
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
    if (problem := _not_all_requested(run)) is not None:
        return CheckResult.fail(problem)
    return CheckResult.ok(f"{failing} of {len(expected)} items failed (HTTP 500) and came back as None; "
                          "all the others are there, in order")


LAB = LabSpec(
    id="06",
    title="Sequential calls vs asyncio.gather",
    solution="06_async_gather.ipynb",
    needs_database=False,
    cell_timeout=120,
    total_timeout=600,
    namespace="perflab.topics.t06_async.rig:NAMESPACE",
    exercises=[
        Exercise("fetch_all", "Fetch 200 items, at most 10 at a time", None, ["fetch_all"], [
            Check("every item, in order", correct_and_in_order, 2),
            Check(f"at most {LIMIT} in flight, and close to {LIMIT}", bounded_in_flight, 2),
            Check(f"within {WALL_BOUND:g} × the ideal time for {LIMIT} in flight", near_ideal_time, 1),
            Check("failed items don't lose the others", survives_failures, 1),
        ]),
    ],
)
