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
