"""Lab 02 · N+1 queries — the grader's checks.

The learner fixes ``recent_orders_page(session, n)``, an endpoint written with the course's SQLAlchemy
models (``perflab.models``) whose loop lazy-loads each order's customer, items and the items'
products. Correctness: the same page as the original at two sizes. Performance contract, valid on
any machine: statements counted server-side are at most ``STATEMENT_BOUND`` and the same at both
sizes (independent of N); and the speed-up over the original, measured in this run against the
reference answer's own speed-up.
"""
from __future__ import annotations

import re

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, contains_eager, joinedload, raiseload, selectinload

from perflab import harness, models
from perflab.grading.grader import Check, CheckResult, Exercise, LabSpec, call_submitted
from perflab.grading.contracts import WrongAnswer, measure_gated, speedup_verdict
from perflab.models import Customer, Order, OrderItem, Product
from perflab.topics.t02_n_plus_one.rig import NAMESPACE, STATEMENT_BOUND, _page, diagnose, original  # noqa: F401

NAME = "recent_orders_page"
SIZES = (20, 200)          # two page sizes: an N+1 grows between them, a fix does not
SPEED_SIZE = 30            # the original takes ~30-100 ms here: enough rounds fit in a few seconds
CALL_TIMEOUT = 60.0
# The reference answer's call is short (~5-20 ms) next to the original's: samples of >= 20 ms (a few
# calls each) keep its CI against itself inside the noise gate more often on a busy machine; ~3 s.
SPEED_PRESET = harness.Preset("grading-n+1", min_rounds=12, max_rounds=20, target_sample_seconds=0.02,
                              budget_seconds=3.0, description="lab 02 speed check: ~3 s")

def reference(session, n):
    orders = session.scalars(
        select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(n)
        .options(joinedload(Order.customer), selectinload(Order.items).joinedload(OrderItem.product))).all()
    return _page(orders)


def _function(ctx):
    return ctx.function(NAME, NAMESPACE)


def _pages(ctx) -> dict:
    """The submission's and the original's pages at both sizes, each in a fresh session (cached)."""
    if "pages" not in ctx.scratch:
        fn = _function(ctx)
        engine = models.engine(ctx.dsn)
        pages = {}
        try:
            for n in SIZES:
                with Session(engine) as session:
                    submitted = call_submitted(fn, session, n, timeout=CALL_TIMEOUT)
                with Session(engine) as session:
                    expected = original(session, n)
                pages[n] = (submitted, expected)
        finally:
            engine.dispose()
        ctx.scratch["pages"] = pages
    return ctx.scratch["pages"]


def same_page(ctx) -> CheckResult:
    for n, (submitted, expected) in _pages(ctx).items():
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


def _counts(ctx) -> dict:
    if "counts" not in ctx.scratch:
        fn = _function(ctx)
        counts = {}
        for n in SIZES:
            with models.counted_session(ctx.dsn) as counted:
                call_submitted(fn, counted.session, n, timeout=CALL_TIMEOUT)
            counts[n] = counted
        ctx.scratch["counts"] = counts
    return ctx.scratch["counts"]


def bounded_statements(ctx) -> CheckResult:
    counts = _counts(ctx)
    small, large = (counts[n] for n in SIZES)
    summary = ", ".join(f"{counts[n].count} for n={n}" for n in SIZES)
    if large.count > STATEMENT_BOUND or small.count > STATEMENT_BOUND:
        n = SIZES[0] if small.count > STATEMENT_BOUND else SIZES[1]
        return CheckResult.fail(f"{diagnose(counts[n], n)} (at most {STATEMENT_BOUND} are expected at any n)",
                                statements=counts[n].shapes_table().to_string())
    if large.count != small.count:
        return CheckResult.fail(
            f"the statement count grows with the page ({summary}): something is still loaded per order "
            f"or per batch. {diagnose(large, SIZES[1])}")
    return CheckResult.ok(f"statements counted by the server: {summary} (bound: {STATEMENT_BOUND}, "
                          f"the original: one per order and more)")


def faster_than_original(ctx) -> CheckResult:
    fn = _function(ctx)
    engine = models.engine(ctx.dsn)

    def endpoint(page_fn):
        def call():
            with Session(engine) as session:
                return page_fn(session, SPEED_SIZE)
        return call

    def submitted():
        with Session(engine) as session:
            return call_submitted(fn, session, SPEED_SIZE, timeout=CALL_TIMEOUT)

    try:
        result = measure_gated(endpoint(original), endpoint(reference), submitted, preset=SPEED_PRESET)
    except WrongAnswer:
        return CheckResult.fail(f"{NAME} returns a different page from the original, so its speed is not "
                                "judged (see the correctness check)")
    finally:
        engine.dispose()
    return speedup_verdict(result, f"{NAME}(session, {SPEED_SIZE})",
                           "Count your statements: every lazy load inside the loop is one more round trip.")


LAB = LabSpec(
    id="02",
    title="N+1 queries",
    solution="02_n_plus_one.ipynb",
    cell_timeout=120,
    total_timeout=600,
    exercises=[
        Exercise("endpoint", "The recent-orders endpoint without an N+1", None, [NAME], [
            Check("the same page as the original", same_page, 2),
            Check("a bounded number of statements, independent of N", bounded_statements, 2),
            Check("faster than the original", faster_than_original, 1),
        ]),
    ],
)
