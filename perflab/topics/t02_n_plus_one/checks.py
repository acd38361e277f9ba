"""Lab 02 · N+1 queries — the grader's checks.

The learner fixes ``recent_orders_page(session, n)``, an endpoint written with the course's SQLAlchemy
models (``perflab.models``) whose loop lazy-loads each order's customer, items and the items'
products. Correctness: the same page as the original at two sizes. Performance contract, valid on
any machine: statements counted server-side are at most ``STATEMENT_BOUND`` and the same at both
sizes (independent of N); and the speed-up over the original, measured in this run against the
reference answer's own speed-up.

Nothing the learner wrote runs here. The endpoint runs in the submission's sandbox, called through
``drivers.page`` (a fresh Session on the sandbox's own role and clone); the reference and the original
come from the solution notebook and run the same way in the reference sandbox, on a clone of its own.
What is judged is measured from outside the sandbox:

- **statements** are counted by the server for the submission's database *role* (every connection it
  opens, tagged or not), in a window the grader opens and closes around the call;
- **times** are taken by the grader around each remote call;
- **fresh data**: before every call the grader itself (logged in as that side's role, never as a
  superuser on a clone the learner owns) adds a new newest order, a copy of a randomly chosen one,
  to the clone the call reads, and the page must start with it. A page cached across calls, or read
  anywhere but the database during this call, is therefore wrong, and a check never passes on a page
  that was not fetched.
"""
from __future__ import annotations

from perflab import harness
from perflab.grading import fresh
from perflab.grading.contracts import speedup_decided, speedup_verdict
from perflab.grading.grader import Check, CheckResult, Exercise, LabSpec
from perflab.topics.t02_n_plus_one.rig import STATEMENT_BOUND, diagnose

NAME = "recent_orders_page"
SIZES = (20, 200)          # two page sizes: an N+1 grows between them, a fix does not
SPEED_SIZE = 30            # the original takes ~30-100 ms here: enough rounds fit in a few seconds
CALL_TIMEOUT = 60.0
DRIVERS = "perflab.topics.t02_n_plus_one.drivers"
PAGE = f"{DRIVERS}:page"
CONNECT = f"{DRIVERS}:connect"
# The reference answer's call is short (~5-20 ms) next to the original's: samples of >= 20 ms (a few
# calls each) keep its CI against itself inside the noise gate more often on a busy machine; ~3 s.
SPEED_PRESET = harness.Preset("grading-n+1", min_rounds=12, max_rounds=20, target_sample_seconds=0.02,
                              budget_seconds=3.0, description="lab 02 speed check: ~3 s")
def _feeder(ctx) -> fresh.Feeder:
    """A new newest order in each clone before every call (perflab/grading/fresh.py)."""
    return fresh.feeder(ctx, NAME)


class _Counted:
    """The statements the server saw from the submission's role in one window (the grader's own left out)."""

    def __init__(self, statements: list) -> None:
        self.statements = statements

    @property
    def count(self) -> int:
        return len(self.statements)

    @property
    def shapes(self):
        from collections import Counter

        return Counter(s.shape for s in self.statements)

    def table(self) -> str:
        return "\n".join(f"{times:>5} x {shape[:160]}" for shape, times in self.shapes.most_common())


def _starts_with(page, order_id: int) -> bool:
    return isinstance(page, list) and bool(page) and isinstance(page[0], dict) and page[0].get("order") == order_id


# ------------------------------------------------------------------------------------------------
# The pages at both sizes, each call counted by the server
# ------------------------------------------------------------------------------------------------

def _observed(ctx) -> dict:
    """``{n: (submitted page, original's page, counted statements, the order added just before)}``.

    The Engine's first connection and SQLAlchemy's start-up queries happen before any count (``CONNECT``)."""
    observed = fresh.observe(ctx, _feeder(ctx), ctx.function(NAME).via(PAGE, timeout=CALL_TIMEOUT),
                             ctx.original_function(NAME).via(PAGE, timeout=CALL_TIMEOUT),
                             ctx.function(NAME).via(CONNECT, timeout=CALL_TIMEOUT), SIZES)
    return {n: (submitted, expected, _Counted(statements), new_id)
            for n, (submitted, expected, statements, new_id) in observed.items()}


def same_page(ctx) -> CheckResult:
    for n, (submitted, expected, _, _) in _observed(ctx).items():
        if submitted == expected:
            continue
        if not isinstance(submitted, list):
            return CheckResult.fail(f"{NAME}(session, {n}) returned a {type(submitted).__name__}; it should "
                                    "return the list of dicts the original builds")
        if len(submitted) != len(expected):
            return CheckResult.fail(
                f"for n={n} your page has {len(submitted)} orders, the original {len(expected)}. A LIMIT on a "
                "query that joins the items limits *rows* (one per item), not orders: limit the orders first "
                "(eager-loading options, or a subquery) and then fetch their items.")
        index = next(i for i, (a, b) in enumerate(zip(submitted, expected)) if a != b)
        return CheckResult.fail(
            f"for n={n} order #{index + 1} differs from the original's: yours {str(submitted[index])[:200]}, "
            f"expected {str(expected[index])[:200]}. Keep the order (newest first), the fields and the items "
            "(in item id order) exactly as the original builds them.")
    return CheckResult.ok(f"the same page as the original for n = {' and '.join(map(str, SIZES))}")


def bounded_statements(ctx) -> CheckResult:
    observed = _observed(ctx)
    counts = {n: counted for n, (_, _, counted, _) in observed.items()}
    for n, (submitted, _, counted, new_id) in observed.items():
        if counted.count == 0 or not _starts_with(submitted, new_id):
            return CheckResult.fail(
                f"for n={n} the server saw {counted.count} statement(s) from your code and the page it returned "
                f"does not start with order {new_id}, which the grader added just before the call: the page was "
                "not read from the database during the call (a cached or made-up page is not judged)")
    small, large = (counts[n] for n in SIZES)
    summary = ", ".join(f"{counts[n].count} for n={n}" for n in SIZES)
    if large.count > STATEMENT_BOUND or small.count > STATEMENT_BOUND:
        n = SIZES[0] if small.count > STATEMENT_BOUND else SIZES[1]
        return CheckResult.fail(f"{diagnose(counts[n], n)} (at most {STATEMENT_BOUND} are expected at any n)",
                                statements=counts[n].table())
    if large.count != small.count:
        return CheckResult.fail(
            f"the statement count grows with the page ({summary}): something is still loaded per order "
            f"or per batch. {diagnose(large, SIZES[1])}")
    return CheckResult.ok(f"statements counted by the server: {summary} (bound: {STATEMENT_BOUND}, "
                          f"the original: one per order and more)")


# ------------------------------------------------------------------------------------------------
# Speed: original, reference and submission through the same path, fresh data before every call
# ------------------------------------------------------------------------------------------------

def faster_than_original(ctx) -> CheckResult:
    submission = ctx.function(NAME).via(PAGE, timeout=CALL_TIMEOUT)
    original = ctx.original_function(NAME).via(PAGE, timeout=CALL_TIMEOUT)
    reference = ctx.reference_function(NAME).via(PAGE, timeout=CALL_TIMEOUT)
    verdict = fresh.measure(_feeder(ctx), original, reference, submission, arg=SPEED_SIZE, preset=SPEED_PRESET,
                            starts_with=lambda page, new_id: _starts_with(page, new_id) and len(page) == SPEED_SIZE,
                            answer="page", decided=speedup_decided())
    if isinstance(verdict, CheckResult):
        return verdict
    result = verdict
    return speedup_verdict(result, f"{NAME}(session, {SPEED_SIZE})",
                           "Count your statements: every lazy load inside the loop is one more round trip.")


LAB = LabSpec(
    id="02",
    title="N+1 queries",
    solution="02_n_plus_one.ipynb",
    cell_timeout=120,
    total_timeout=600,
    namespace="perflab.topics.t02_n_plus_one.rig:NAMESPACE",
    exercises=[
        Exercise("endpoint", "The recent-orders endpoint without an N+1", None, [NAME], [
            Check("the same page as the original", same_page, 2),
            Check("a bounded number of statements, independent of N", bounded_statements, 2),
            Check("faster than the original", faster_than_original, 1),
        ]),
    ],
)
