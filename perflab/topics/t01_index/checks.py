"""Lab 01 · Let the index work — the grader's checks.

Correctness: the same rows (as a multiset) as the original query. Performance contract, valid on
any machine and at any scale: the plan (no Seq Scan on orders; an Index Only Scan with no heap
fetches), rows and pages read against the reference answer, and the speed-up over the original
measured in this same run against the reference's own speed-up.

Every answer of this lab is a value (SQL text, one DDL statement), so no learner code runs at all:
the grader sends the text to PostgreSQL, never through an admin connection.

- The learner's SQL runs as the submission's own role on its own clone (``ctx.dsn``), as exactly one
  statement (the extended protocol refuses ``;``-chained extras), inside a READ ONLY transaction, and
  its rows are streamed with a cap (a cross join cannot flood the grader's memory).
- The reference and the original are the solution notebook's and the starter's own text
  (``ctx.sources``), not copies typed here; the account page's query is read from the notebook too.
  For correctness and plans they run as the reference role on the reference clone (``ctx.reference_dsn``):
  the same data, untouched by anything the submission's answers did.
- The speed check times original, reference and submission on one connection of the submission's role,
  interleaved, through the same code path (stream the rows, compare them with the original's), and every
  timed call must return the original's rows: an answer that is right once and then returns less (state
  kept in the session between calls) fails instead of looking fast.
- The covering index: the learner's DDL is one ``CREATE INDEX … ON orders`` statement, created by the
  submission's role on its clone (it owns the tables, nothing else), measured, then dropped; the
  reference index is created the same way by the reference role on the reference clone.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
from collections import Counter
from typing import Iterator

import psycopg
from psycopg import sql as pgsql

from perflab import notebooks, probes
from perflab.grading import sources
from perflab.grading.grader import Check, CheckResult, Exercise, LabSpec, SubmissionError, learner_code
from perflab.grading.contracts import WrongAnswer, measure_gated, speedup_decided, speedup_verdict

ACCOUNT_CUSTOMERS = (1, 2, 1500)  # the big tenant, a busy customer, a quiet one

# Rows and pages read may exceed the reference's by this factor (plus a little slack for tiny data).
READ_ALLOWANCE = 1.5
# A submitted query may return this many rows more than the original before the grader stops reading.
EXTRA_ROWS = 10_000
STREAM_CHUNK = 1_000
# A learner's statement runs at most this long (the grader's own limit, under the role's); a whole
# timed comparison on one connection at most TIMING_SECONDS.
STATEMENT_SECONDS = 20
TIMING_SECONDS = 180
DDL_SECONDS = 60  # the covering index's CREATE INDEX (an expression can make a build arbitrarily slow)

WRAPPED_HINT = ("a function or arithmetic on created_at hides the column from its index: compare the raw "
                "column with a half-open range (created_at >= start AND created_at < end)")


# ------------------------------------------------------------------------------------------------
# One source: the notebook's reference, original and workload query
# ------------------------------------------------------------------------------------------------

def _notebook_text(ctx, side: str, name: str) -> str:
    value = ctx.sources(side).get(name)
    if not isinstance(value, str) or not value.strip():
        raise RuntimeError(f"the {side} {name} is not a SQL string in {ctx.lab.solution_path.name}")
    return value


def _account_sql(ctx) -> str:
    """The account page's query, as the solution notebook defines it (``ACCOUNT_SQL``)."""
    if "account_sql" not in ctx.scratch:
        notebook = notebooks.read_notebook(ctx.lab.solution_path)
        code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
        value = sources.definitions(code, ["ACCOUNT_SQL"]).get("ACCOUNT_SQL")
        if not isinstance(value, str):
            raise RuntimeError(f"{ctx.lab.solution_path.name} defines no ACCOUNT_SQL string")
        ctx.scratch["account_sql"] = value
    return ctx.scratch["account_sql"]


# ------------------------------------------------------------------------------------------------
# Running SQL: one statement, read only, bounded
# ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _reading(dsn: str, deadline: float = STATEMENT_SECONDS) -> Iterator[psycopg.Connection]:
    """A connection whose statements all run in one READ ONLY transaction, rolled back at the end
    (so nothing a statement sets, e.g. with set_config, outlives the check). Each statement is limited
    to ``STATEMENT_SECONDS``; a statement can lift that limit for the next ones (set_config), so a
    watchdog thread also cancels whatever runs once ``deadline`` seconds have passed."""
    with psycopg.connect(dsn, options=f"-c statement_timeout={STATEMENT_SECONDS * 1000}") as conn:
        conn.read_only = True
        stop = threading.Event()

        def watchdog() -> None:
            if stop.wait(deadline):
                return
            while not stop.is_set():
                with contextlib.suppress(Exception):
                    conn.cancel_safe(timeout=2.0)
                stop.wait(1.0)

        guard = threading.Thread(target=watchdog, name="lab01-sql-watchdog", daemon=True)
        guard.start()
        try:
            yield conn
        finally:
            stop.set()
            guard.join()
            with contextlib.suppress(psycopg.Error):
                conn.rollback()


def _fetch(conn, sql: str, limit: float = float("inf")) -> tuple[Counter, bool]:
    """The rows of one statement (the extended protocol: a second statement is a syntax error), read
    in chunks; stops (and cancels the query) after ``limit`` rows. Returns (rows, cut short)."""
    found: Counter = Counter()
    count = 0
    with conn.cursor() as cur, contextlib.closing(cur.stream(sql, size=STREAM_CHUNK)) as rows:
        for row in rows:
            count += 1
            if count > limit:
                break
            found[row] += 1
    if count > limit:
        conn.rollback()  # the cancelled statement aborted the transaction
        return found, True
    return found, False


def _explain(conn, sql: str, params=None) -> probes.Plan:
    """EXPLAIN ANALYZE of exactly one statement (prepared: no `;`-chained extras)."""
    options = "ANALYZE, BUFFERS, FORMAT JSON"
    row = conn.execute(f"EXPLAIN ({options}) {sql}", params, prepare=params is None).fetchone()
    return probes.parse_plan(sql, row[0])


def _submitted_sql(ctx, name: str) -> str:
    sql = ctx.answers[name]
    if not isinstance(sql, str) or not sql.strip():
        raise SubmissionError(f"{name} should be a SQL string, got {type(sql).__name__}")
    return sql


def _original_rows(ctx, name: str) -> Counter:
    """The original query's rows, run as the reference role on the reference clone."""
    key = f"original rows {name}"
    if key not in ctx.scratch:
        with _reading(ctx.reference_dsn) as conn:
            ctx.scratch[key] = _fetch(conn, _notebook_text(ctx, "original", name))[0]
    return ctx.scratch[key]


def _submitted_rows(conn, name: str, sql: str, expected: Counter) -> tuple[Counter, bool]:
    with learner_code(name):
        return _fetch(conn, sql, sum(expected.values()) + EXTRA_ROWS)


# ------------------------------------------------------------------------------------------------
# Exercises 1 and 2: the same rows, through the index, faster
# ------------------------------------------------------------------------------------------------

def same_rows(name: str):
    def check(ctx) -> CheckResult:
        sql = _submitted_sql(ctx, name)
        expected = _original_rows(ctx, name)
        with _reading(ctx.dsn) as conn:
            submitted, cut = _submitted_rows(conn, name, sql, expected)
        if submitted == expected and not cut:
            return CheckResult.ok(f"{name} returns the same {sum(expected.values()):,} rows as the original")
        missing = sum((expected - submitted).values())
        extra = sum((submitted - expected).values())
        extra_text = f"more than {extra:,}" if cut else f"{extra:,}"
        return CheckResult.fail(
            f"{name} returns different rows from the original: {missing:,} missing, {extra_text} extra "
            f"(of {sum(expected.values()):,}). Check the window's edges: >= the first instant, < the first "
            "instant after it; and keep the selected columns as they were.")
    return check


def uses_the_index(name: str):
    def check(ctx) -> CheckResult:
        sql = _submitted_sql(ctx, name)
        with _reading(ctx.dsn) as conn, learner_code(name):
            plan = _explain(conn, sql)
        with _reading(ctx.reference_dsn) as conn:
            reference = _explain(conn, _notebook_text(ctx, "reference", name))
        if plan.seq_scan_on("orders"):
            return CheckResult.fail(f"the plan still does a Seq Scan on orders: {WRAPPED_HINT}",
                                    plan=plan.tree())
        if not plan.scans("orders"):
            return CheckResult.fail(f"{name} does not read orders at all: the exercise is to rewrite the query "
                                    "on orders so that it uses the index on created_at", plan=plan.tree())
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
        expected = _original_rows(ctx, name)
        limit = sum(expected.values())
        queries = {"original": _notebook_text(ctx, "original", name),
                   "reference": _notebook_text(ctx, "reference", name), "submission": sql}
        # One connection of the submission's role, one READ ONLY transaction: the three queries are
        # timed through the same path, and every call must return the original's rows.
        with _reading(ctx.dsn, TIMING_SECONDS) as conn:
            submitted, cut = _submitted_rows(conn, name, sql, expected)
            if cut or submitted != expected:
                return CheckResult.fail(f"{name} returns different rows from the original, so its speed "
                                        "is not judged (see the correctness check)")

            def run(label: str):
                def call() -> int:
                    try:
                        rows, more = _fetch(conn, queries[label], limit)
                    except psycopg.Error as error:
                        if label != "submission":
                            raise
                        detail = (str(error).strip().splitlines() or [""])[0]
                        raise SubmissionError(f"running {name} failed while it was timed: "
                                              f"{type(error).__name__}: {detail}") from None
                    if more or rows != expected:
                        if label != "submission":
                            raise RuntimeError(f"the {label} query returned other rows while it was timed")
                        raise SubmissionError(f"{name} returned other rows than the original's on a later call "
                                              "while it was timed: every call must return the same rows")
                    return len(rows)
                return call

            try:
                result = measure_gated(run("original"), run("reference"), run("submission"),
                                       decided=speedup_decided())
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


def _indexes(conn) -> set:
    """Every index in the clone's public schema, as (table, index)."""
    return set(conn.execute("SELECT tablename, indexname FROM pg_indexes WHERE schemaname = 'public'").fetchall())


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
           WHERE i.indexrelid = %s::regclass ORDER BY k.ord""", (pgsql.Identifier(name).as_string(conn),)).fetchall()
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


def _with_index(dsn: str, ddl: str, what: str, account_sql: str) -> IndexTrial:
    """Create one index on orders as ``dsn``'s role (one statement), VACUUM, measure, drop it again."""
    with psycopg.connect(dsn, autocommit=True, options=f"-c statement_timeout={DDL_SECONDS * 1000}") as conn:
        before = _indexes(conn)
        created: set = set()
        try:
            with learner_code(what):
                with conn.transaction():
                    conn.cursor(binary=True).execute(ddl)  # the extended protocol: exactly one statement
            created = _indexes(conn) - before
            on_orders = sorted(index for table, index in created if table == "orders")
            if len(created) != 1 or len(on_orders) != 1:
                raise SubmissionError(f"{what} should create exactly one index on orders; it created "
                                      f"{len(on_orders)} on orders and {len(created) - len(on_orders)} elsewhere")
            name = on_orders[0]
            conn.execute("VACUUM ANALYZE orders")
            plans = {c: probes.explain(conn, account_sql, {"customer": c}) for c in ACCOUNT_CUSTOMERS}
            size = conn.execute("SELECT pg_relation_size(%s::regclass)",
                                (pgsql.Identifier(name).as_string(conn),)).fetchone()[0]
            key, included = _index_columns(conn, name)
        finally:
            for _, index in created:
                conn.execute(pgsql.SQL("DROP INDEX IF EXISTS {}").format(pgsql.Identifier(index)))
    return IndexTrial(name, plans, size, key, included)


def _covering_measurements(ctx) -> dict:
    if "covering" not in ctx.scratch:
        ddl = ctx.answers["COVERING_INDEX_DDL"]
        if not isinstance(ddl, str) or not _CREATE_INDEX.match(ddl):
            raise SubmissionError("COVERING_INDEX_DDL should be one statement of the form "
                                  "CREATE INDEX name ON orders (...) [INCLUDE (...)]")
        account_sql = _account_sql(ctx)
        submitted = _with_index(ctx.dsn, ddl, "COVERING_INDEX_DDL", account_sql)
        try:  # the reference index: the solution notebook's, by the reference role on its own clone
            reference = _with_index(ctx.reference_dsn, _notebook_text(ctx, "reference", "COVERING_INDEX_DDL"),
                                    "the reference index", account_sql)
        except SubmissionError as error:
            raise RuntimeError(f"the reference COVERING_INDEX_DDL failed: {error}") from None
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
