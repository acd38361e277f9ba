"""Lab 03 · Indexes for the tail — the grader's checks.

The learner answers with ``TAIL_INDEXES``: a list of ``CREATE INDEX … ON orders …`` statements for a
workload of two tenant queries (``PAGE_SQL``, ``PENDING_SQL``) on skewed data (customer 1 owns a third
of the orders). The grader creates them in its own copy of the data, then checks, in order:

1. the answer is only indexes on orders, within a budget (at most ``MAX_INDEXES``, their total size
   at most ``SIZE_ALLOWANCE`` × the reference answer's);
2. deterministic plan properties: no Seq Scan on orders (for the big tenant, a small one, and in the
   generic plan a prepared statement may run for any tenant), and rows read for the big tenant close
   to the reference's;
3. the big tenant's p99 at most ``P99_MULTIPLE`` × the small tenants' p99, measured call by call in
   this run; a noise gate (a primary-key lookup timed alongside must have a tight tail) makes a
   noisy run inconclusive instead of failed, and a quiet run over the limit is measured again (up to
   ``ATTEMPTS`` runs) before it fails; it fails only when the big tenant's p95 is over the limit too
   (a plan that reads its rows slows every call; a few late calls on a busy machine do not).

The answer is a value (DDL text), so no learner code runs at all. Each statement is sent alone, with
the extended protocol (a ``;``-chained extra is a syntax error), by the submission's own role on its
own clone (``ctx.dsn``: it owns the course tables of that clone and nothing else), never through an
admin connection; what it created is read back from the catalogs (an index on another table is
refused). The reference is the solution notebook's ``TAIL_INDEXES`` (``ctx.sources("reference")``),
created by the reference role on the reference clone (``ctx.reference_dsn``): the same data, so its
sizes and rows read compare like with like. Timings are the grader's own, around the course's two
queries sent by the grader on the submission's clone: nothing the learner wrote is in the timed path
but the indexes the planner may choose.
"""
from __future__ import annotations

import re

import numpy as np
import psycopg

from perflab import latency, probes
from perflab.topics.t03_tail_latency.rig import BIG, PAGE_SQL, PENDING_SQL, QUERIES, SMALL  # noqa: F401
from perflab.grading.grader import Check, CheckResult, Exercise, LabSpec, SubmissionError, learner_code

NAME = "TAIL_INDEXES"
MAX_INDEXES = 2
MAX_STATEMENTS = 8            # statements the grader builds at all (more is refused before anything runs)
DDL_SECONDS = 60              # each statement of the answer runs at most this long
SIZE_ALLOWANCE = 1.5          # total size of the new indexes vs the reference's
READ_ALLOWANCE = 1.5          # rows read for the big tenant vs the reference's (+ 50)
P99_MULTIPLE = 3.0            # big tenant's p99 vs small tenants' p99
NOISE_LIMIT = 2.0
QUIET_TAIL = 8.0              # a control query's p99 above 8x its p50 is the machine, not the answer: inconclusive
CONTROL_SQL = "SELECT total FROM orders WHERE id = %s"
CALLS = 300                   # per population and query, per attempt
ATTEMPTS = 3
BODY_PERCENTILE = 95          # a p99 over the limit fails only when this percentile is over it too

_CREATE_INDEX = re.compile(r"^\s*CREATE\s+(UNIQUE\s+)?INDEX\b[^;]*\bON\s+(ONLY\s+)?(public\.)?orders\b[^;]*;?\s*$",
                           re.IGNORECASE | re.DOTALL)


def _indexes(conn) -> dict:
    """Every index of the clone's public schema: ``{index name: (table, size in bytes)}``."""
    rows = conn.execute("SELECT c.relname, t.relname, pg_relation_size(c.oid) FROM pg_index i "
                        "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
                        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'").fetchall()
    return {name: (table, size) for name, table, size in rows}


def _apply(conn, ddls: list[str], what: str) -> dict:
    """Create ``ddls`` as this connection's role, one statement each; ``{new index on orders: size}``."""
    before = _indexes(conn)
    for ddl in ddls:
        with learner_code(what):
            conn.cursor(binary=True).execute(ddl)  # the extended protocol: exactly one statement
    created = {name: entry for name, entry in _indexes(conn).items() if name not in before}
    elsewhere = sorted(f"{name} on {table}" for name, (table, _) in created.items() if table != "orders")
    if elsewhere:
        raise SubmissionError(f"{what} may only create indexes on orders; it created {', '.join(elsewhere)}")
    conn.execute("VACUUM ANALYZE orders")
    return {name: _indexes(conn)[name][1] for name in created}


def generic_plan(conn, sql: str, tenant: int) -> probes.Plan:
    """The plan a prepared statement runs for any tenant (``plan_cache_mode = force_generic_plan``)."""
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute("DEALLOCATE ALL")
    conn.execute(f"PREPARE tail_q(bigint) AS {sql.replace('%s', '$1')}")
    try:
        return probes.explain(conn, f"EXECUTE tail_q({int(tenant)})")
    finally:
        conn.execute("DEALLOCATE ALL")
        conn.execute("RESET plan_cache_mode")


def _submitted(ctx) -> list[str]:
    ddls = ctx.answers[NAME]
    if isinstance(ddls, str):
        ddls = [ddls]
    if not isinstance(ddls, list) or not all(isinstance(d, str) for d in ddls):
        raise SubmissionError(f"{NAME} should be a list of CREATE INDEX statements (strings)")
    if len(ddls) > MAX_STATEMENTS:
        raise SubmissionError(f"{NAME} has {len(ddls)} statements; the budget is {MAX_INDEXES} indexes, so the "
                              f"grader does not build more than {MAX_STATEMENTS}")
    for ddl in ddls:
        if not _CREATE_INDEX.match(ddl):
            raise SubmissionError(f"{NAME} may only contain single CREATE INDEX … ON orders … statements; "
                                  f"this one is not: {ddl.strip()[:120]!r}")
    return ddls


def _reference_measurements(ctx) -> tuple[dict, dict]:
    """The solution notebook's indexes, created by the reference role on the reference clone."""
    ddls = ctx.sources("reference").get(NAME)
    if not isinstance(ddls, list) or not ddls:
        raise RuntimeError(f"the solution notebook's {NAME} is not a list of CREATE INDEX statements")
    with psycopg.connect(ctx.reference_dsn, autocommit=True) as conn:
        try:
            reference = _apply(conn, ddls, f"the reference {NAME}")
        except SubmissionError as error:
            raise RuntimeError(str(error)) from None
        reference_plans = {q: probes.explain(conn, sql, (BIG,)) for q, sql in QUERIES.items()}
    return reference, reference_plans


def _measurements(ctx) -> dict:
    """Reference sizes and plans, then the submission's (created in its own clone), cached; a broken
    answer is remembered too (its indexes may be half-made: the next check must not try again)."""
    if "tail" in ctx.scratch:
        if isinstance(ctx.scratch["tail"], SubmissionError):
            raise SubmissionError(str(ctx.scratch["tail"]))
        return ctx.scratch["tail"]
    try:
        ddls = _submitted(ctx)
        reference, reference_plans = _reference_measurements(ctx)
        with psycopg.connect(ctx.dsn, autocommit=True, options=f"-c statement_timeout={DDL_SECONDS * 1000}") as conn:
            created = _apply(conn, ddls, NAME)
            plans = {q: {t: probes.explain(conn, sql, (t,)) for t in (BIG, SMALL[0])} for q, sql in QUERIES.items()}
            generic = {q: generic_plan(conn, sql, BIG) for q, sql in QUERIES.items()}
    except SubmissionError as error:
        ctx.scratch["tail"] = error
        raise
    ctx.scratch["tail"] = {"reference": reference, "reference_plans": reference_plans,
                           "created": created, "plans": plans, "generic": generic}
    return ctx.scratch["tail"]


def within_budget(ctx) -> CheckResult:
    m = _measurements(ctx)
    created, reference = m["created"], m["reference"]
    size, reference_size = sum(created.values()), sum(reference.values())
    if not created:
        return CheckResult.fail(f"{NAME} creates no index: the workload's plans are unchanged. Which columns "
                                "does each query compare with =, and which does it ORDER BY?")
    if len(created) > MAX_INDEXES:
        return CheckResult.fail(
            f"{len(created)} new indexes ({', '.join(created)}); the budget is {MAX_INDEXES}. Every index is "
            "paid for on every write: one well-ordered index per query is enough.")
    if size > SIZE_ALLOWANCE * reference_size:
        return CheckResult.fail(
            f"your indexes take {size / 1024:,.0f} kB; two well-chosen ones take {reference_size / 1024:,.0f} kB. "
            "Index only the columns the queries need, and only the rows a query can want (a partial index "
            "for the pending orders).")
    return CheckResult.ok(f"{len(created)} index(es), {size / 1024:,.0f} kB (reference {reference_size / 1024:,.0f} kB)")


def plans_fit(ctx) -> CheckResult:
    m = _measurements(ctx)
    for query, by_tenant in m["plans"].items():
        for tenant, plan in list(by_tenant.items()) + [("any (generic plan)", m["generic"][query])]:
            if plan.seq_scan_on("orders"):
                return CheckResult.fail(f"{query}: the plan still does a Seq Scan on orders for "
                                        f"customer {tenant}", plan=plan.tree())
        plan, reference = by_tenant[BIG], m["reference_plans"][query]
        limit = READ_ALLOWANCE * reference.rows_read("orders") + 50
        if plan.rows_read("orders") > limit:
            sort = " and sorts them" if plan.has("Sort") or plan.has("Incremental Sort") else ""
            return CheckResult.fail(
                f"{query}: for the big tenant (customer {BIG}) the plan reads "
                f"{plan.rows_read('orders'):,.0f} rows of orders{sort} to return 20; a well-ordered index reads "
                f"about {reference.rows_read('orders'):,.0f}. Put the column compared with = first and the "
                "ORDER BY column next, so the scan can stop after 20 rows.", plan=plan.tree())
    return CheckResult.ok("no Seq Scan on orders; rows read for the big tenant: "
                          + ", ".join(f"{q} {p[BIG].rows_read('orders'):,.0f}" for q, p in m["plans"].items()))


def _detail(ratios: dict, with_ratio: bool = True) -> str:
    """``{query: (ratio, big p99, small p99)}`` as the check's messages show it."""
    return "; ".join(f"{q}: big p99 {b:.2f} ms vs small p99 {s:.2f} ms" + (f" ({r:.1f}x)" if with_ratio else "")
                     for q, (r, b, s) in ratios.items())


def tail_close_to_median(ctx) -> CheckResult:
    """Big tenant's p99 within P99_MULTIPLE of the small tenants', for both queries, in this run."""
    _measurements(ctx)  # the indexes exist in ctx.dsn from here on
    rng = np.random.default_rng(7)
    least_noisy = None  # (noise, ratio, ratios) of the quietest attempt, whatever the gate said
    quiet = []          # (ratio, ratios) of the attempts the noise gate let through and that can be judged
    late = []           # (ratio, ratios) of quiet attempts over the limit through a few late calls only
    with psycopg.connect(ctx.dsn, autocommit=True) as conn:
        for _ in range(ATTEMPTS):
            ratios, bodies, noise = {}, {}, 1.0
            for query, sql in QUERIES.items():
                tenants = [BIG if i % 2 else int(rng.choice(SMALL)) for i in range(2 * CALLS)]

                def run(tenant, sql=sql):
                    return conn.execute(sql, (tenant,)).fetchall()

                def control(tenant):
                    return conn.execute(CONTROL_SQL, (tenant,)).fetchall()

                dist = latency.latencies({query: run, "control": control}, calls=len(tenants),
                                         args_for=lambda i: (tenants[i],),
                                         label_for=lambda i: "big" if tenants[i] == BIG else "small", warmup=10)
                runs = dist.runs[dist.runs.variant == query]
                small = runs[runs.label == "small"].ms.to_numpy()
                big = runs[runs.label == "big"].ms.to_numpy()
                p99_small = np.percentile(small, 99)
                ratios[query] = (np.percentile(big, 99) / p99_small, np.percentile(big, 99), p99_small)
                bodies[query] = np.percentile(big, BODY_PERCENTILE) / np.percentile(small, BODY_PERCENTILE)
                # The machine's own tail: a primary-key lookup interleaved with the workload costs the
                # same every time, so its p99/p50 is noise (another process, a GC pause), not the answer.
                control_ms = dist.runs[dist.runs.variant == "control"].ms.to_numpy()
                noise = max(noise, np.percentile(control_ms, 99) / np.percentile(control_ms, 50) / QUIET_TAIL * NOISE_LIMIT)
            ratio = max(r[0] for r in ratios.values())
            if least_noisy is None or (noise, ratio) < least_noisy[:2]:
                least_noisy = (noise, ratio, ratios)
            if noise <= NOISE_LIMIT:
                if ratio <= P99_MULTIPLE:
                    quiet.append((ratio, ratios))
                    break   # a quiet run within the limit: judged
                # Over the limit. A plan that reads the big tenant's rows makes every one of its calls slow:
                # its p95 is over the limit too, in every run. A p99 of 300 calls is their 3 slowest, and on a
                # busy machine (make test keeps both cores busy) 3 late calls can land on one tenant while the
                # control's tail stays under the gate (seen: 3.4x and 3.6x with both tenants' p50 at 0.18 ms):
                # such a run is measured again, and never fails the answer. Either kind is measured again
                # (up to ATTEMPTS) in case a quiet run within the limit follows.
                if any(r > P99_MULTIPLE and bodies[q] > P99_MULTIPLE for q, (r, _, _) in ratios.items()):
                    quiet.append((ratio, ratios))
                else:
                    late.append((ratio, ratios))
    if not quiet and late:
        detail = _detail(min(late, key=lambda attempt: attempt[0])[1])
        return CheckResult.inconclusive(f"the big tenant's p99 was over {P99_MULTIPLE:g}x the small tenants' only through "
                                        f"a few late calls (its p{BODY_PERCENTILE} within {P99_MULTIPLE:g}x): on a busy "
                                        f"machine that is noise, not the plan; rerun the grader. {detail}")
    if not quiet:
        detail = _detail(least_noisy[2], with_ratio=False)
        return CheckResult.inconclusive(f"this machine was too noisy to judge p99 (a primary-key lookup timed "
                                        f"alongside had a p99 over {QUIET_TAIL:g}x its median); rerun the grader. {detail}")
    ratio, ratios = min(quiet, key=lambda attempt: attempt[0])
    detail = _detail(ratios)
    if ratio <= P99_MULTIPLE:
        return CheckResult.ok(f"the big tenant's p99 is within {P99_MULTIPLE:g}x of the small tenants': {detail}")
    return CheckResult.fail(f"the big tenant's p99 is more than {P99_MULTIPLE:g}x the small tenants': {detail}. "
                            "Its requests still do work in proportion to its size: see the plans check.")


LAB = LabSpec(
    id="03",
    title="Indexes for the tail",
    solution="03_tail_latency.ipynb",
    cell_timeout=120,
    total_timeout=600,
    exercises=[
        Exercise("tail", "Two indexes for a skewed workload", None, [NAME], [
            Check("only indexes on orders, within the budget", within_budget, 1),
            Check("plans read few rows for the big tenant, no Seq Scan", plans_fit, 2),
            Check("the big tenant's p99 close to the small tenants'", tail_close_to_median, 2),
        ]),
    ],
)
