"""Lab 02's own tables: the starter names each lazy load; a right-but-slow and a fast-but-wrong answer
fail on the check that names their fault (tests/test_labs.py: the solution passes, the starter fails)."""
from labtools import SLOW, expect, fails, graded, passes, submission

from perflab.grading import grader

SAME = ("endpoint", "the same page as the original")
BOUNDED = ("endpoint", "a bounded number of statements, independent of N")
FASTER = ("endpoint", "faster than the original")

PAGE = '''    return [{"order": o.id, "placed": o.created_at.isoformat(), "customer": o.customer.name,
             "tier": o.customer.tier, "total": str(o.total),
             "items": [(i.product.name, i.quantity, str(i.unit_price)) for i in o.items]}
            for o in orders]
'''

# Loads the customer and the items eagerly but forgets the items' products: 1 + one per distinct product.
RIGHT_BUT_SLOW = '''def recent_orders_page(session, n):
    orders = session.scalars(
        select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(n)
        .options(joinedload(Order.customer), selectinload(Order.items))
    ).all()
''' + PAGE

# One query with every JOIN and the LIMIT on it: it limits item rows, not orders.
FAST_BUT_WRONG = '''def recent_orders_page(session, n):
    from itertools import groupby
    rows = session.execute(
        select(Order, Customer, OrderItem, Product)
        .join(Order.customer).join(Order.items).join(OrderItem.product)
        .order_by(Order.created_at.desc(), Order.id.desc(), OrderItem.id).limit(n)
    ).all()
    page = []
    for (order, customer), group in groupby(rows, key=lambda r: (r[0], r[1])):
        page.append({"order": order.id, "placed": order.created_at.isoformat(), "customer": customer.name,
                     "tier": customer.tier, "total": str(order.total),
                     "items": [(p.name, i.quantity, str(i.unit_price)) for _, _, i, p in group]})
    return page
'''


def _grade(tmp_path, source: str):
    return grader.grade(submission("02", tmp_path, {"def recent_orders_page": source}))


def test_the_starter_names_each_lazy_load(tiny_data):
    expect(graded("02", "starter"), {
        SAME: passes(), FASTER: SLOW,
        BOUNDED: fails("statements for 20 orders", *(f"{attribute} is lazy-loaded inside the loop"
                                                     for attribute in ("`order.customer`", "`order.items`", "`item.product`"))),
    })


def test_right_but_slow_fails_the_statement_bound(tiny_data, tmp_path):
    found = expect(_grade(tmp_path, RIGHT_BUT_SLOW), {
        SAME: passes(), BOUNDED: fails("`item.product` is lazy-loaded inside the loop")})
    assert "`order.customer`" not in found[BOUNDED].message


def test_fast_but_wrong_fails_correctness(tiny_data, tmp_path):
    expect(_grade(tmp_path, FAST_BUT_WRONG), {SAME: fails("limits *rows*"), BOUNDED: passes(), FASTER: fails()})
