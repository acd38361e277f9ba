"""Topic 02 · N+1 queries: what the lab notebook and its checks share.

The endpoint as first written (``original``: lazy loads inside the loop), the page it returns, the bound
on statements, and the diagnosis that names which relationship is lazy-loaded from the statements counted.
"""
from __future__ import annotations

import re

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, contains_eager, joinedload, raiseload, selectinload

from perflab import models
from perflab.models import Customer, Order, OrderItem, Product

STATEMENT_BOUND = 4        # orders (+ customers), items, products: at most one statement each, plus one

# What a submitted function can use without importing it (the lab notebook says so).
NAMESPACE = {
    "select": select, "text": text, "func": func, "Session": Session,
    "joinedload": joinedload, "selectinload": selectinload, "raiseload": raiseload,
    "contains_eager": contains_eager,
    "Customer": Customer, "Order": Order, "OrderItem": OrderItem, "Product": Product,
}


def _page(orders) -> list[dict]:
    return [{"order": o.id, "placed": o.created_at.isoformat(), "customer": o.customer.name,
             "tier": o.customer.tier, "total": str(o.total),
             "items": [(i.product.name, i.quantity, str(i.unit_price)) for i in o.items]}
            for o in orders]


def original(session, n):
    orders = session.scalars(
        select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(n)).all()
    return _page(orders)


# Which lazy load a repeated statement shape comes from, and how to say it to the learner.
LAZY_LOADS = (
    (re.compile(r"\bFROM customers\b.*\bWHERE customers\.id = \?", re.I | re.S), "`order.customer`",
     "joinedload(Order.customer)"),
    (re.compile(r"\bFROM order_items\b.*\border_items\.order_id\b", re.I | re.S), "`order.items`",
     "selectinload(Order.items)"),
    (re.compile(r"\bFROM products\b.*\bWHERE products\.id = \?", re.I | re.S), "`item.product`",
     "selectinload(Order.items).joinedload(OrderItem.product)"),
)


def diagnose(counted: models.CountedSession, n: int) -> str:
    """'42 statements for 40 orders: `order.customer` is lazy-loaded inside the loop (…)'"""
    repeated = [(shape, times) for shape, times in counted.shapes.most_common() if times > 1]
    causes, fixes, unknown = [], [], []
    for shape, times in repeated:
        for pattern, attribute, fix in LAZY_LOADS:
            if pattern.search(shape):
                causes.append(f"{attribute} is lazy-loaded inside the loop ({times} × one SELECT)")
                fixes.append(fix)
                break
        else:
            unknown.append(f"{times} × {shape[:120]}")
    text_ = f"{counted.count} statements for {n} orders"
    if causes:
        text_ += ": " + "; ".join(causes)
    if unknown:
        text_ += ("; " if causes else ": ") + "the same statement ran several times: " + "; ".join(unknown)
    if any("OrderItem.product" in fix for fix in fixes):
        fixes = [fix for fix in fixes if fix != "selectinload(Order.items)"]
    if fixes:
        text_ += f". Load them with the query instead: .options({', '.join(fixes)})"
    return text_


# --------------------------------------------------------------------------------------------------
# The notebook's round-trip grid: the page timed with the database 0, 1, 5 ms away (the plumbing that
# keeps the lesson's cells short: an engine through the latency proxy, a few timed calls per cell).
# --------------------------------------------------------------------------------------------------

GRID_CALLS = 5             # calls per cell of the grid (3 at preset `fast`), within GRID_CELL_BUDGET
GRID_CALLS_FAST = 3
GRID_CELL_BUDGET = 1.0     # seconds: a cell stops calling once its calls add up to this (at least one)
GRID_PREDICT_OVER = 1.5    # seconds: at preset `fast`, a cell predicted slower than this is not run


class engine_at:
    """``with engine_at(rtt_ms, engine, dsn) as an_engine``: ``engine`` itself at 0 ms; otherwise an
    Engine through a latency proxy that adds ``rtt_ms`` to every round trip (disposed on leaving)."""

    def __init__(self, rtt_ms: float, engine, dsn: str):
        self.rtt_ms, self.engine, self.dsn = rtt_ms, engine, dsn
        self._proxy = self._engine = None

    def __enter__(self):
        if not self.rtt_ms:
            return self.engine
        from urllib.parse import urlsplit

        from perflab import stack

        self._proxy = stack.latency_proxy(rtt_ms=self.rtt_ms)
        proxy = self._proxy.__enter__()
        self._engine = models.engine(proxy.dsn(urlsplit(self.dsn).path.lstrip("/")))
        return self._engine

    def __exit__(self, *exc_info):
        if self._proxy is None:
            return False
        try:
            self._engine.dispose()
        finally:
            self._proxy.__exit__(*exc_info)
        return False


def time_per_call(call, engine, n: int, at_most: int, budget: float = GRID_CELL_BUDGET):
    """``(median, calls, fastest, slowest)`` seconds of ``call(engine, n)``, pool already connected."""
    from statistics import median
    from time import perf_counter

    with engine.connect():
        pass                                    # the pool holds a connection: no connect cost timed
    times: list[float] = []
    while len(times) < at_most and sum(times) < budget:
        started = perf_counter()
        call(engine, n)
        times.append(perf_counter() - started)
    return median(times), len(times), min(times), max(times)


def round_trip_grid(calls: dict, engine, dsn: str, rtts, sizes, statements: dict, preset: str | None = None):
    """The page's time for each RTT × N × variant: a DataFrame, one row per cell.

    ``calls``: ``{label: call(engine, n)}``; ``statements``: ``{(label, n): statements per call}``.
    At preset ``fast`` (the tests) a cell predicted (time at 0 ms + RTT × statements) to take over
    ``GRID_PREDICT_OVER`` is not run: its row says ``how="predicted"``. Columns: ``rtt_ms, N, variant,
    statements, seconds, calls, how, fastest, slowest, ms``, ``0 ms + RTT × statements`` (that
    prediction, in ms, for every row) and ``lazy ÷ this`` (the first variant's time over this one's).
    """
    import pandas as pd

    from perflab import harness, progress

    fast = (preset or harness.resolve_preset().name) == "fast"
    labels = list(calls)
    rows: list[dict] = []
    what = f"{len(labels)} variant{'s' if len(labels) != 1 else ''}"
    with progress.track(len(rtts) * len(sizes), unit="(RTT, N) pairs", what=what) as step:
        for rtt in rtts:
            with engine_at(rtt, engine, dsn) as an_engine:
                for n in sizes:
                    step.update(len(rows) // len(labels))
                    for label in labels:
                        step.update(detail=f"{rtt:g} ms RTT, N={n:,}: {label}")
                        k = statements[(label, n)]
                        base = next((r["seconds"] for r in rows
                                     if r["variant"] == label and r["N"] == n and r["rtt_ms"] == 0), None)
                        predicted = None if base is None else base + k * rtt / 1e3
                        if fast and predicted is not None and predicted > GRID_PREDICT_OVER:
                            seconds, count, fastest, slowest, how = predicted, 0, predicted, predicted, "predicted"
                        else:
                            at_most = GRID_CALLS_FAST if fast else GRID_CALLS
                            (seconds, count, fastest, slowest), how = (
                                time_per_call(calls[label], an_engine, n, at_most), "measured")
                        rows.append({"rtt_ms": rtt, "N": n, "variant": label, "statements": k, "seconds": seconds,
                                     "calls": count, "how": how, "fastest": fastest, "slowest": slowest})
        step.update(len(rows) // len(labels))
    grid = pd.DataFrame(rows)
    grid["ms"] = (grid.seconds * 1e3).round(1)
    at_zero = grid[grid.rtt_ms == 0].set_index(["variant", "N"]).seconds
    grid["0 ms + RTT × statements"] = [round((at_zero[(v, n)] + k * r / 1e3) * 1e3, 1)
                                       for v, n, k, r in zip(grid.variant, grid.N, grid.statements, grid.rtt_ms)]
    first_ms = grid[grid.variant == labels[0]].set_index(["rtt_ms", "N"]).ms
    grid["lazy ÷ this"] = [round(first_ms[(r, n)] / ms, 1) for r, n, ms in zip(grid.rtt_ms, grid.N, grid.ms)]
    return grid


def grid_record(grid, lazy: str, join: str) -> dict:
    """What ``lesson.record("round trips", ...)`` keeps of the grid: the worst cell's headline, every row."""
    worst = grid[(grid.N == grid.N.max()) & (grid.rtt_ms == grid.rtt_ms.max())].set_index("variant")
    headline = (f"N={grid.N.max()} at {grid.rtt_ms.max()} ms RTT: lazy {worst.ms[lazy]:,.0f} ms "
                f"({worst.statements[lazy]} statements, {worst.how[lazy]}) vs "
                f"one JOIN {worst.ms[join]:,.1f} ms (1 statement)")
    return {"kind": "grid", "headline": headline, "rows": grid.drop(columns="seconds").to_dict("records")}


def rows_transferred(engine, functions) -> tuple[dict, object]:
    """Call each ``fn(engine)`` once, counting the statements it ran and the rows they sent back.

    Returns ``({label: {"statements": k, "rows received": rows}}, the last call's result)``: the rows
    are the driver's ``cursor.rowcount``, what crossed the wire before the ORM de-duplicated them.
    """
    from sqlalchemy import event

    received: list[int] = []

    def count_rows(conn, cursor, statement, parameters, context, executemany):
        received.append(cursor.rowcount)

    transferred, result = {}, None
    event.listen(engine, "after_cursor_execute", count_rows)
    try:
        for fn in functions:
            received.clear()
            result = fn(engine)
            label = (fn.__doc__ or fn.__name__).strip().splitlines()[0]
            transferred[label] = {"statements": len(received), "rows received": sum(received)}
    finally:
        event.remove(engine, "after_cursor_execute", count_rows)
    return transferred, result
