"""Lab 10 · Profiling — the grader's checks.

Exercise 1 names the slow report's top hotspot: checked against the grader's own cProfile profile of
the original report, run here on the grader's copy of the data (the function of the report with the
largest cumulative time; if the top two are within ``CLOSE_CALL`` of each other, either is accepted).

Exercise 2 fixes it. Correctness: the same report text as the original for several limits. The
performance contract, valid on any machine: statements counted server-side (no N+1), the speed-up
over the original measured in this same run (``measure_gated``: at least ``MIN_SPEEDUP``), and the
peak memory of one call measured here with ``tracemalloc`` (at most ``MAX_MEMORY_SHARE`` of the
original's).
"""
from __future__ import annotations

import psycopg
from psycopg.rows import dict_row

from perflab import memory, probes, profiling
from perflab.grading.grader import Check, CheckResult, Exercise, LabSpec, SubmissionError, call_submitted, learner_code
from perflab.grading.contracts import WrongAnswer, measure_gated

LIMIT = 4_000
CHECK_LIMITS = (LIMIT, 0, 1, 777)
MAX_STATEMENTS = 10
MIN_SPEEDUP = 3.0
MAX_MEMORY_SHARE = 0.30
CLOSE_CALL = 1.15


# ------------------------------------------------------------------------------------------------
# The original report (the lab's starter) and a reference fix
# ------------------------------------------------------------------------------------------------

def load_orders(conn, limit):
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute("SELECT * FROM orders ORDER BY id DESC LIMIT %s", (limit,)).fetchall()


def key_account_ids(conn):
    return [row[0] for row in conn.execute(
        "SELECT id FROM customers WHERE tier = 'enterprise' ORDER BY id LIMIT 200")]


def is_key_account(customer_id, account_ids):
    return customer_id in account_ids


def order_items_summary(conn, order_id):
    return conn.execute("SELECT count(*), coalesce(sum(quantity * unit_price), 0) FROM order_items "
                        "WHERE order_id = %s", (order_id,)).fetchone()


def format_line(order_id, placed, items, value):
    return f"{order_id:>9}  {placed:%Y-%m-%d}  {items:>3} items  {value:>10}\n"


def original_basket_report(conn, limit=LIMIT):
    orders = load_orders(conn, limit)
    account_ids = key_account_ids(conn)
    report, total_items, total_value = "", 0, 0
    for order in orders:
        if is_key_account(order["customer_id"], account_ids):
            items, value = order_items_summary(conn, order["id"])
            report += format_line(order["id"], order["created_at"], items, value)
            total_items += items
            total_value += value
    report += f"{'total':>9}  {'':10}  {total_items:>3} items  {total_value:>10}\n"
    return report


REFERENCE_SQL = """
SELECT o.id, o.created_at, count(i.id), coalesce(sum(i.quantity * i.unit_price), 0)
FROM (SELECT id, customer_id, created_at FROM orders ORDER BY id DESC LIMIT %s) AS o
JOIN (SELECT id FROM customers WHERE tier = 'enterprise' ORDER BY id LIMIT 200) AS c ON c.id = o.customer_id
LEFT JOIN order_items AS i ON i.order_id = o.id
GROUP BY o.id, o.created_at
ORDER BY o.id DESC"""


def reference_basket_report(conn, limit=LIMIT):
    lines, total_items, total_value = [], 0, 0
    with conn.transaction(), conn.cursor(name="basket_report") as cursor:
        cursor.itersize = 1_000
        cursor.execute(REFERENCE_SQL, (limit,))
        for order_id, placed, items, value in cursor:
            lines.append(format_line(order_id, placed, items, value))
            total_items += items
            total_value += value
    lines.append(f"{'total':>9}  {'':10}  {total_items:>3} items  {total_value:>10}\n")
    return "".join(lines)


REPORT_FUNCTIONS = ("load_orders", "key_account_ids", "is_key_account", "order_items_summary", "format_line")
# What a submitted basket_report may use without defining it: the lab's helpers, as given.
HELPERS = {"dict_row": dict_row, "load_orders": load_orders, "key_account_ids": key_account_ids,
           "is_key_account": is_key_account, "order_items_summary": order_items_summary,
           "format_line": format_line, "REPORT_LIMIT": LIMIT}


def _connect(dsn):
    return psycopg.connect(dsn, autocommit=True)


def _report_fn(ctx):
    return ctx.function("basket_report", namespace=HELPERS)


# ------------------------------------------------------------------------------------------------
# Exercise 1: name the hotspot
# ------------------------------------------------------------------------------------------------

def names_the_top_hotspot(ctx) -> CheckResult:
    answer = ctx.answers["TOP_HOTSPOT"]
    if not isinstance(answer, str):
        raise SubmissionError(f"TOP_HOTSPOT should be a string (a function's name), not {type(answer).__name__}")
    named = answer.strip().removesuffix("()").strip()
    if named not in REPORT_FUNCTIONS:
        return CheckResult.fail(f"TOP_HOTSPOT is {answer!r}; name one of the report's functions: "
                                f"{', '.join(REPORT_FUNCTIONS)}")
    with _connect(ctx.dsn) as conn:
        original_basket_report(conn)                      # warm the server's caches first
        measured = profiling.profile(original_basket_report, conn)
    ranking = measured.ranking(REPORT_FUNCTIONS)
    (top, top_seconds), (second, second_seconds) = ranking[0], ranking[1]
    accepted = {top} | ({second} if top_seconds < CLOSE_CALL * second_seconds else set())
    share = {name: seconds / measured.total_seconds for name, seconds in ranking}
    table = ", ".join(f"{name} {share[name]:.0%}" for name, _ in ranking)
    calls = measured.seconds_of(top)[2]
    if named in accepted:
        return CheckResult.ok(f"yes: in the grader's profile {named}() has the most cumulative time "
                              f"({table})", ranking=ranking)
    return CheckResult.fail(
        f"not {named}(): in the grader's own profile of the original report, {top}() has the most "
        f"cumulative time ({table}; {calls:,} calls). Profile the original (cProfile, sorted by cumulative "
        "time) and read the calls column", ranking=ranking)


# ------------------------------------------------------------------------------------------------
# Exercise 2: fix it
# ------------------------------------------------------------------------------------------------

def same_report(ctx) -> CheckResult:
    fn = _report_fn(ctx)
    with _connect(ctx.dsn) as conn:
        for limit in CHECK_LIMITS:
            expected = original_basket_report(conn, limit)
            got = call_submitted(fn, conn, limit, timeout=60)
            if got != expected:
                if not isinstance(got, str):
                    return CheckResult.fail(f"basket_report(conn, {limit}) returned a {type(got).__name__}, "
                                            "not the report's text")
                want, have = expected.splitlines(), got.splitlines()
                first = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
                shown = have[first] if first < len(have) else "(nothing)"
                wanted = want[first] if first < len(want) else "(nothing)"
                return CheckResult.fail(
                    f"basket_report(conn, {limit}) differs from the original's report from line {first + 1} "
                    f"({len(have)} lines, the original {len(want)}): expected {wanted.strip()!r}, got "
                    f"{shown.strip()!r}. Keep the order (newest first), the formatting and the total line")
    return CheckResult.ok(f"the same report as the original for limits {', '.join(map(str, CHECK_LIMITS))}")


def no_n_plus_one(ctx) -> CheckResult:
    fn = _report_fn(ctx)
    with probes.count_statements(ctx.dsn) as probe:
        with _connect(probe.dsn) as conn:
            call_submitted(fn, conn, LIMIT, timeout=60)
    if probe.count <= MAX_STATEMENTS:
        return CheckResult.ok(f"{probe.count} statement(s) for a {LIMIT:,}-order report")
    shapes = "; ".join(f"{n:,} x {shape[:70]}" for shape, n in probe.shapes.most_common(2))
    return CheckResult.fail(f"{probe.count:,} statements for one {LIMIT:,}-order report (at most {MAX_STATEMENTS} "
                            f"expected): {shapes}. One query per order is an N+1: fetch the item counts and "
                            "values for all the orders at once (a JOIN with GROUP BY)")


def faster(ctx) -> CheckResult:
    fn = _report_fn(ctx)
    with _connect(ctx.dsn) as conn:
        with learner_code("basket_report"):
            fn(conn, LIMIT)
        with memory.frozen_heap():
            try:
                result = measure_gated(lambda: original_basket_report(conn), lambda: reference_basket_report(conn),
                                       lambda: fn(conn, LIMIT))
            except WrongAnswer:
                return CheckResult.fail("basket_report's report differs from the original's, so its speed is not "
                                        "judged (see the correctness check)")
    gain = result.ratio("original", "submission")
    reference_gain = result.ratio("original", "reference")
    details = {"submission": str(gain), "reference": str(reference_gain)}
    if gain.clear and gain.value >= MIN_SPEEDUP:
        return CheckResult.ok(f"{gain.value:.1f}x faster than the original (the reference fix: "
                              f"{reference_gain.value:.1f}x)", **details)
    return CheckResult.fail(f"against the original: {gain}; at least {MIN_SPEEDUP:g}x is expected (the reference fix: "
                            f"{reference_gain.value:.1f}x). Fix the hotspot the profile names first", **details)


def less_memory(ctx) -> CheckResult:
    fn = _report_fn(ctx)
    with _connect(ctx.dsn) as conn:
        with learner_code("basket_report"):
            fn(conn, LIMIT)                                  # warm-up: imports and caches are not the report's
        original_basket_report(conn)
        original = memory.peak(original_basket_report, conn, LIMIT, keep_result=False)
        with learner_code("basket_report"):
            submitted = memory.peak(fn, conn, LIMIT, keep_result=False)
    share = submitted.peak_bytes / max(original.peak_bytes, 1)
    text = (f"peak {memory.format_bytes(submitted.peak_bytes)} during one report, "
            f"{share:.0%} of the original's {memory.format_bytes(original.peak_bytes)} (tracemalloc)")
    if share <= MAX_MEMORY_SHARE:
        return CheckResult.ok(text, share=share)
    return CheckResult.fail(f"{text}; at most {MAX_MEMORY_SHARE:.0%} is expected. Do not load every column of every "
                            "order into a list: select only the columns the report prints and stream the rows "
                            "(a server-side cursor: conn.cursor(name=...))", share=share)


LAB = LabSpec(
    id="10",
    title="Profiling: find it, then fix it",
    solution="10_profiling.ipynb",
    cell_timeout=120,
    total_timeout=600,
    exercises=[
        Exercise("hotspot", "Name the top hotspot", None, ["TOP_HOTSPOT"], [
            Check("matches the grader's own profile", names_the_top_hotspot, 2),
        ]),
        Exercise("fix", "Fix the report: time and memory", None, ["basket_report"], [
            Check("same report as the original", same_report, 2),
            Check(f"no N+1: at most {MAX_STATEMENTS} statements", no_n_plus_one, 1),
            Check(f"at least {MIN_SPEEDUP:g}x faster than the original", faster, 1),
            Check(f"peak memory at most {MAX_MEMORY_SHARE:.0%} of the original's", less_memory, 1),
        ]),
    ],
)
