"""Lab 01 · Let the index work — the grader's checks.

Correctness: the same rows (as a multiset) as the original query. Performance contract, valid on
any machine and at any scale: the plan (no Seq Scan on orders; an Index Only Scan with no heap
fetches), rows and pages read against the reference answer, and the speed-up over the original
measured in this same run against the reference's own speed-up.
"""
from __future__ import annotations

import dataclasses
import re
from collections import Counter

import psycopg

from perflab import probes
from perflab.grading.grader import Check, CheckResult, Exercise, LabSpec, SubmissionError, learner_code
from perflab.grading.contracts import WrongAnswer, measure_gated, speedup_verdict

ORIGINALS = {
    "MARCH_2024_SQL": """SELECT id, customer_id, total FROM orders
        WHERE EXTRACT(YEAR FROM created_at) = 2024 AND EXTRACT(MONTH FROM created_at) = 3""",
    "RECENT_SQL": """SELECT id, status, total FROM orders
        WHERE created_at + interval '30 days' >= timestamptz '2025-06-30 00:00:00+00'
          AND created_at < timestamptz '2025-06-30 00:00:00+00'""",
}
REFERENCES = {
    "MARCH_2024_SQL": """SELECT id, customer_id, total FROM orders
        WHERE created_at >= '2024-03-01' AND created_at < '2024-04-01'""",
    "RECENT_SQL": """SELECT id, status, total FROM orders
        WHERE created_at >= timestamptz '2025-06-30 00:00:00+00' - interval '30 days'
          AND created_at < timestamptz '2025-06-30 00:00:00+00'""",
}
ACCOUNT_SQL = "SELECT created_at, total FROM orders WHERE customer_id = %(customer)s AND created_at >= '2025-01-01'"
REFERENCE_INDEX = "CREATE INDEX perflab_reference_idx ON orders (customer_id, created_at) INCLUDE (total)"
ACCOUNT_CUSTOMERS = (1, 2, 1500)  # the big tenant, a busy customer, a quiet one

# Rows and pages read may exceed the reference's by this factor (plus a little slack for tiny data).
READ_ALLOWANCE = 1.5

WRAPPED_HINT = ("a function or arithmetic on created_at hides the column from its index: compare the raw "
                "column with a half-open range (created_at >= start AND created_at < end)")


def _rows(dsn: str, sql: str, params=None) -> Counter:
    with psycopg.connect(dsn) as conn:
        return Counter(conn.execute(sql, params).fetchall())


def _submitted_sql(ctx, name: str) -> str:
    sql = ctx.answers[name]
    if not isinstance(sql, str) or not sql.strip():
        raise SubmissionError(f"{name} should be a SQL string, got {type(sql).__name__}")
    return sql


def same_rows(name: str):
    def check(ctx) -> CheckResult:
        sql = _submitted_sql(ctx, name)
        with learner_code(name):
            submitted = _rows(ctx.dsn, sql)
        expected = _rows(ctx.dsn, ORIGINALS[name])
        if submitted == expected:
            return CheckResult.ok(f"{name} returns the same {sum(expected.values()):,} rows as the original")
        missing = sum((expected - submitted).values())
        extra = sum((submitted - expected).values())
        return CheckResult.fail(
            f"{name} returns different rows from the original: {missing:,} missing, {extra:,} extra "
            f"(of {sum(expected.values()):,}). Check the window's edges: >= the first instant, < the first "
            "instant after it; and keep the selected columns as they were.")
    return check


def uses_the_index(name: str):
    def check(ctx) -> CheckResult:
        sql = _submitted_sql(ctx, name)
        with learner_code(name):
            plan = probes.explain(ctx.dsn, sql)
        reference = probes.explain(ctx.dsn, REFERENCES[name])
        if plan.seq_scan_on("orders"):
            return CheckResult.fail(f"the plan still does a Seq Scan on orders: {WRAPPED_HINT}",
                                    plan=plan.tree())
        limit = READ_ALLOWANCE * reference.rows_read("orders") + 100
        if plan.rows_read("orders") > limit:
            return CheckResult.fail(
                f"{name} reads {plan.rows_read('orders'):,.0f} rows of orders to return its answer; an "
                f"index-friendly query reads about {reference.rows_read('orders'):,.0f}. {WRAPPED_HINT}",
                plan=plan.tree())
        return CheckResult.ok(f"no Seq Scan: {' > '.join(dict.fromkeys(plan.node_types))}, "
                              f"{plan.rows_read('orders'):,.0f} rows read")
    return check


def faster_than_original(name: str):
    def check(ctx) -> CheckResult:
        sql = _submitted_sql(ctx, name)
        with psycopg.connect(ctx.dsn, autocommit=True) as conn:
            def run(query):
                return lambda: Counter(conn.execute(query).fetchall())

            with learner_code(name):
                conn.execute(sql).fetchall()
            try:
                result = measure_gated(run(ORIGINALS[name]), run(REFERENCES[name]), run(sql))
            except WrongAnswer:
                return CheckResult.fail(f"{name} returns different rows from the original, so its speed "
                                        "is not judged (see the correctness check)")
        return speedup_verdict(result, name, WRAPPED_HINT)
    return check


# ------------------------------------------------------------------------------------------------
# Exercise 3: the covering index
# ------------------------------------------------------------------------------------------------

_CREATE_INDEX = re.compile(r"^\s*CREATE\s+(UNIQUE\s+)?INDEX\b[^;]*\bON\s+(ONLY\s+)?(public\.)?orders\b[^;]*;?\s*$",
                           re.IGNORECASE | re.DOTALL)


def _orders_indexes(conn) -> dict:
    return dict(conn.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'orders'").fetchall())


@dataclasses.dataclass(frozen=True)
class IndexTrial:
    name: str
    plans: dict
    size: int
    key: tuple  # key columns, in order
    included: tuple  # INCLUDE columns


def _index_columns(conn, name: str) -> tuple[tuple, tuple]:
    rows = conn.execute(
        """SELECT a.attname, k.ord <= i.indnkeyatts AS is_key
           FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indexrelid = %s::regclass ORDER BY k.ord""", (name,)).fetchall()
    return tuple(c for c, key in rows if key), tuple(c for c, key in rows if not key)


def _why_not_used(trial: "IndexTrial") -> str:
    missing = [c for c in ("customer_id", "created_at", "total") if c not in trial.key + trial.included]
    if missing:
        return (f"it does not hold {', '.join(missing)}, so the table would still have to be read: add what "
                "the query filters on to the key and what it only returns to INCLUDE")
    if trial.key[:2] != ("customer_id", "created_at"):
        return (f"its key is ({', '.join(trial.key)}): it cannot narrow this customer's orders to 2025, so it is "
                "not worth reading. Key it by the column compared with = first, then the range column")
    return "the planner found another way cheaper: compare your plan with the reference's"


def _with_index(ctx, ddl: str, what: str):
    """Create one index on orders in the grader's copy, VACUUM, and return (name, plans, size)."""
    with psycopg.connect(ctx.dsn, autocommit=True) as conn:
        before = _orders_indexes(conn)
        with learner_code(what):
            with conn.transaction():
                conn.execute(ddl)
        created = sorted(set(_orders_indexes(conn)) - set(before))
        if len(created) != 1:
            raise SubmissionError(f"{what} should create exactly one index on orders; it created {len(created)}")
        name = created[0]
        conn.execute("VACUUM ANALYZE orders")
        plans = {c: probes.explain(conn, ACCOUNT_SQL, {"customer": c}) for c in ACCOUNT_CUSTOMERS}
        size = conn.execute("SELECT pg_relation_size(%s::regclass)", (name,)).fetchone()[0]
        key, included = _index_columns(conn, name)
        conn.execute(f'DROP INDEX "{name}"')
    return IndexTrial(name, plans, size, key, included)


def _covering_measurements(ctx) -> dict:
    if "covering" not in ctx.scratch:
        ddl = ctx.answers["COVERING_INDEX_DDL"]
        if not isinstance(ddl, str) or not _CREATE_INDEX.match(ddl):
            raise SubmissionError("COVERING_INDEX_DDL should be one statement of the form "
                                  "CREATE INDEX name ON orders (...) [INCLUDE (...)]")
        submitted = _with_index(ctx, ddl, "COVERING_INDEX_DDL")
        reference = _with_index(ctx, REFERENCE_INDEX, "the reference index")
        ctx.scratch["covering"] = {"submitted": submitted, "reference": reference}
    return ctx.scratch["covering"]


def index_only_scan(ctx) -> CheckResult:
    trial = _covering_measurements(ctx)["submitted"]
    for customer, plan in trial.plans.items():
        used = [n for n in plan.nodes if n.index == trial.name]
        if not used:
            chosen = ", ".join(sorted({n.index for n in plan.nodes if n.index})) or "a table scan"
            return CheckResult.fail(f"for customer {customer} the planner did not use your index {trial.name} "
                                    f"(it chose {chosen}): {_why_not_used(trial)}", plan=plan.tree())
        if not any(n.node_type == "Index Only Scan" for n in used) or plan.heap_fetches:
            return CheckResult.fail(
                f"for customer {customer} the plan is {' > '.join(dict.fromkeys(plan.node_types))} "
                f"({plan.heap_fetches} heap fetches), not an Index Only Scan using {trial.name}: "
                f"{_why_not_used(trial)}", plan=plan.tree())
    return CheckResult.ok(f"Index Only Scan using {trial.name} with 0 heap fetches for customers "
                          + ", ".join(map(str, trial.plans)))


def reads_few_pages(ctx) -> CheckResult:
    measured = _covering_measurements(ctx)
    plans, reference_plans = measured["submitted"].plans, measured["reference"].plans
    big = ACCOUNT_CUSTOMERS[0]
    pages, reference_pages = plans[big].buffers, reference_plans[big].buffers
    if pages <= READ_ALLOWANCE * reference_pages + 3:
        return CheckResult.ok(f"customer {big}: {pages} pages read (a well-ordered index: {reference_pages})")
    return CheckResult.fail(
        f"for customer {big} (a third of all orders) your index makes the query read {pages} pages; a "
        f"well-ordered one reads {reference_pages}. Put the column compared with = first and the range "
        "column second in the key, so the scan starts at 2025 instead of filtering all of the customer's "
        "orders", plan=plans[big].tree())


def compact_index(ctx) -> CheckResult:
    measured = _covering_measurements(ctx)
    size, reference_size = measured["submitted"].size, measured["reference"].size
    if size <= READ_ALLOWANCE * reference_size:
        return CheckResult.ok(f"index size {size / 1024:,.0f} kB (reference {reference_size / 1024:,.0f} kB)")
    return CheckResult.fail(f"your index is {size / 1024:,.0f} kB, the reference {reference_size / 1024:,.0f} kB: "
                            "include only the columns the query needs; every index is paid for on every write")


LAB = LabSpec(
    id="01",
    title="Let the index work",
    solution="01_let_the_index_work.ipynb",
    cell_timeout=120,
    total_timeout=600,
    exercises=[
        Exercise("march", "March 2024 without a function on the column", None, ["MARCH_2024_SQL"], [
            Check("same rows as the original", same_rows("MARCH_2024_SQL"), 2),
            Check("the plan uses the index", uses_the_index("MARCH_2024_SQL"), 1),
            Check("faster than the original, as fast as an index allows", faster_than_original("MARCH_2024_SQL"), 1),
        ]),
        Exercise("recent", "The last 30 days without arithmetic on the column", None, ["RECENT_SQL"], [
            Check("same rows as the original", same_rows("RECENT_SQL"), 2),
            Check("the plan uses the index", uses_the_index("RECENT_SQL"), 1),
            Check("faster than the original, as fast as an index allows", faster_than_original("RECENT_SQL"), 1),
        ]),
        Exercise("covering", "A covering index for the account page", None, ["COVERING_INDEX_DDL"], [
            Check("Index Only Scan with no heap fetches", index_only_scan, 2),
            Check("reads few pages for the biggest customer", reads_few_pages, 1),
            Check("no bigger than it needs to be", compact_index, 1),
        ]),
    ],
)
