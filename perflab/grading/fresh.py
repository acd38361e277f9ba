"""Fresh data before every call: an answer cached across calls, or computed ahead of time, is wrong.

Labs whose answer is a page or a report of the newest orders (02, 10) time the original, the reference and
the submission with one more order in the database before every call. The grader adds it itself, logged in
as the clone's own role (never as the superuser: a trigger the learner created would run with its rights).
The k-th order added to either clone copies the same randomly chosen order, so the submission's clone and
the reference's stay alike. Every timed answer must start with the order just added::

    feeder = fresh.feeder(ctx)                        # one per grading run (ctx.scratch)
    verdict = fresh.measure(feeder, original, reference, submission, arg=30, preset=PRESET,
                            starts_with=_starts_with, what="recent_orders_page")
    if isinstance(verdict, CheckResult): return verdict   # a wrong or stale answer: failed
    return speedup_verdict(verdict, ...)                    # the Comparison
"""
from __future__ import annotations

import random
from typing import Any, Callable

import psycopg

from perflab.grading.contracts import measure_gated
from perflab.grading.grader import CheckResult, Inconclusive, SubmissionError

__all__ = ["ADD_ORDER", "Feeder", "feeder", "observe", "measure"]

SOURCES = 256  # existing orders the fresh ones are copied from (one list per grading run)

# One statement, run by the grader as the clone's own role: a copy of order %(src)s (its customer, its
# items) becomes the newest order, with the next ids. Returns the new order's id.
ADD_ORDER = """
WITH src AS (SELECT * FROM orders WHERE id = %(src)s),
top AS (SELECT max(id) AS id, max(created_at) AS created_at FROM orders),
new_order AS (
    INSERT INTO orders (id, customer_id, status, created_at, total, shipping_address, notes)
    SELECT top.id + 1, src.customer_id, src.status, top.created_at + interval '1 second', src.total,
           src.shipping_address, src.notes
    FROM src, top
    RETURNING id),
new_items AS (
    INSERT INTO order_items (id, order_id, product_id, quantity, unit_price)
    SELECT (SELECT coalesce(max(id), 0) FROM order_items) + row_number() OVER (ORDER BY i.id), new_order.id,
           i.product_id, i.quantity, i.unit_price
    FROM order_items AS i, new_order
    WHERE i.order_id = %(src)s)
SELECT id FROM new_order
"""
_ANY_ORDER = ("SELECT (SELECT o.id FROM orders AS o WHERE o.id >= r ORDER BY o.id LIMIT 1) "
              "FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(r, k) ORDER BY k")


class Feeder:
    """Adds a new newest order to a side's clone ("submission" or "reference") before a call.

    ``sources_sql``: the orders to copy from (one column of ids); default any order of the table.
    ``what``: the answer's name, for the learner's messages."""

    def __init__(self, ctx, what: str, sources_sql: str | None = None) -> None:
        self.what = what
        self.conns: dict[str, psycopg.Connection] = {}
        self.added = {"submission": 0, "reference": 0}
        for side, dsn in (("reference", ctx.reference_dsn), ("submission", ctx.dsn)):
            conn = psycopg.connect(dsn, autocommit=True)
            ctx._resources.callback(conn.close)
            conn.execute("SET synchronous_commit = off")   # a throwaway clone: no fsync in the timed path
            conn.execute("SET lock_timeout = '5s'")
            conn.execute("SET statement_timeout = '20s'")
            self.conns[side] = conn
        # This connection's server session id (as in the server log), left out of the learner's count.
        self.session = self.conns["submission"].execute(
            "SELECT to_hex(trunc(extract(epoch FROM backend_start))::bigint) || '.' || to_hex(pid) "
            "FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()[0]
        chooser = random.SystemRandom()
        reference = self.conns["reference"]
        if sources_sql:
            candidates = [row[0] for row in reference.execute(sources_sql)]
            self.sources = [chooser.choice(candidates) for _ in range(SOURCES)]
        else:
            top = reference.execute("SELECT max(id) FROM orders").fetchone()[0]
            picks = [chooser.randint(1, top) for _ in range(SOURCES)]
            self.sources = [row[0] for row in reference.execute(_ANY_ORDER, (picks,)) if row[0] is not None]

    def add(self, side: str) -> int:
        """Add the next order to ``side``'s clone; returns its id."""
        source = self.sources[self.added[side] % len(self.sources)]
        try:
            row = self.conns[side].execute(ADD_ORDER, {"src": source}).fetchone()
        except psycopg.Error as exc:
            if side != "submission":
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise SubmissionError(
                f"the grader could not add an order to your copy of the data before calling {self.what} "
                f"({type(exc).__name__}: {first}); does your code change the tables or leave a transaction "
                "holding a lock?") from None
        self.added[side] += 1
        if row is None:
            raise SubmissionError(f"the grader could not add an order to your copy of the data before calling "
                                  f"{self.what}: the orders table no longer has order {source}")
        return row[0]

    def add_both(self) -> int:
        new_id = self.add("submission")
        self.add("reference")
        return new_id


def feeder(ctx, what: str, sources_sql: str | None = None) -> Feeder:
    """The grading run's one feeder (kept in ``ctx.scratch``)."""
    if "feeder" not in ctx.scratch:
        ctx.scratch["feeder"] = Feeder(ctx, what, sources_sql)
    return ctx.scratch["feeder"]


def observe(ctx, feeder: Feeder, submission: Callable, original: Callable, connect: Callable, args) -> dict:
    """``{arg: (submitted, original's, statements, the order added just before)}`` for each of ``args``, once
    per grading run (``ctx.scratch["observed"]``; a `SubmissionError` is kept and raised again).

    ``connect()`` opens the sandbox's connection first, in a window of its own (the count waits until the log
    shows it), so no one-off start-up statement is counted; then a fresh order goes into both clones before
    each pair of calls, and the statements of the submission's role in its call are kept (the feeder's own
    connection left out)."""
    if "observed" not in ctx.scratch:
        try:
            with ctx.count_statements():
                connect()
            observed = {}
            for arg in args:
                new_id = feeder.add_both()
                with ctx.count_statements() as probe:
                    submitted = submission(arg)
                expected = original(arg)
                statements = [s for s in probe.statements if s.session != feeder.session]
                observed[arg] = (submitted, expected, statements, new_id)
            ctx.scratch["observed"] = observed
        except SubmissionError as exc:
            ctx.scratch["observed"] = exc
    if isinstance(ctx.scratch["observed"], SubmissionError):
        raise SubmissionError(str(ctx.scratch["observed"]))
    return ctx.scratch["observed"]


def measure(feeder: Feeder, original: Callable, reference: Callable, submission: Callable, *, arg: Any, preset,
            starts_with: Callable[[Any, int], bool], answer: str = "answer", decided: Callable | None = None):
    """Time the three (remotes taking ``arg``) with a fresh order before every call, through `measure_gated`.

    Returns the Comparison, or a failed `CheckResult` when the submission's first answer differs from the
    original's or a timed answer lacks the order just added (a stale answer fails even when the timing is
    inconclusive); raises `Inconclusive` when the machine was too noisy and the answers were right. ``decided``:
    as for `measure_gated`."""
    alike = feeder.added["submission"] == feeder.added["reference"]   # each variant's first answer comparable
    kept: dict[str, list] = {"original": [], "submission": []}

    def timed(remote, side: str, into: list | None = None):
        def call():
            new_id = feeder.add(side)          # the grader's own statement, on that side's clone
            value = remote(arg)
            if into is not None:
                into.append((new_id, value))
            return value
        return call

    noisy = result = None
    try:
        # Each call sees one more order than the last, so the harness cannot compare the variants' first
        # answers with each other (the reference shares the original's clone); they are judged below.
        result = measure_gated(timed(original, "reference", kept["original"]), timed(reference, "reference"),
                               timed(submission, "submission", kept["submission"]), equal=lambda a, b: True,
                               preset=preset, decided=decided)
    except Inconclusive as exc:
        noisy = exc
    if kept["submission"] and kept["original"]:
        if alike and kept["submission"][0][1] != kept["original"][0][1]:
            return CheckResult.fail(f"{feeder.what} returns a different {answer} from the original, so its speed "
                                    "is not judged (see the correctness check)")
        stale = [k for k, (new_id, value) in enumerate(kept["submission"], 1) if not starts_with(value, new_id)]
        if stale:
            return CheckResult.fail(
                f"{len(stale)} of the {len(kept['submission'])} timed calls returned a {answer} without the order "
                f"the grader had just added (first: call {stale[0]}): a {answer} kept from an earlier call is not "
                f"the current {answer}, so its speed is not judged")
    if noisy is not None:
        raise noisy
    return result
