"""Lab 02's own tables: the starter names each lazy load; a right-but-slow and a fast-but-wrong answer
fail on the check that names their fault (tests/test_labs.py: the solution passes, the starter fails).

Each variant is judged by the checks (`labtools.judge`: re-created and called in the grader's sandboxes, as
`grader.grade` does after the notebook run, which only defines the function and cannot change a verdict)."""
from labtools import SLOW, expect, fails, graded, judge, passes

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


# The starter touched but not fixed (a list() instead of .all()): still one lazy load per order and item.
TOUCHED_STARTER = '''def recent_orders_page(session, n):
    orders = list(session.scalars(
        select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(n)))
''' + PAGE

# Caches the page across calls (a default argument survives between calls in one process): the grader
# adds a new newest order before every call, so a kept page is stale.
CACHED = '''def recent_orders_page(session, n, _kept={}):
    if n not in _kept:
        orders = session.scalars(
            select(Order).order_by(Order.created_at.desc(), Order.id.desc()).limit(n)
            .options(joinedload(Order.customer), selectinload(Order.items).joinedload(OrderItem.product))
        ).all()
        _kept[n] = [{"order": o.id, "placed": o.created_at.isoformat(), "customer": o.customer.name,
                     "tier": o.customer.tier, "total": str(o.total),
                     "items": [(i.product.name, i.quantity, str(i.unit_price)) for i in o.items]}
                    for o in orders]
    session.execute(text("SELECT 1"))
    return _kept[n]
'''


def _judge(source: str, checks=(SAME, BOUNDED, FASTER)):
    return judge("02", list(checks), recent_orders_page=source)


def test_the_untouched_starter_scores_zero(tiny_data):
    report = graded("02", "starter")
    expect(report, {SAME: fails("still the starter code"), BOUNDED: fails("still the starter code"),
                    FASTER: fails("still the starter code")})
    assert report.score == 0, report.text()


def test_an_unfixed_attempt_names_each_lazy_load(tiny_data):
    expect(_judge(TOUCHED_STARTER), {
        SAME: passes(), FASTER: SLOW,
        BOUNDED: fails("statements for 20 orders", *(f"{attribute} is lazy-loaded inside the loop"
                                                     for attribute in ("`order.customer`", "`order.items`", "`item.product`"))),
    })


def test_right_but_slow_fails_the_statement_bound(tiny_data):
    found = expect(_judge(RIGHT_BUT_SLOW, (SAME, BOUNDED)), {
        SAME: passes(), BOUNDED: fails("`item.product` is lazy-loaded inside the loop")})
    assert "`order.customer`" not in found[BOUNDED].message


def test_fast_but_wrong_fails_correctness(tiny_data):
    expect(_judge(FAST_BUT_WRONG), {SAME: fails("limits *rows*"), BOUNDED: passes(), FASTER: fails()})


def test_a_page_cached_across_calls_is_not_judged_fast(tiny_data):
    """The first call per size fetches; later calls return the kept page after a `SELECT 1`. The grader's
    fresh order before each call makes every kept page stale: no check passes on it."""
    found = expect(_judge(CACHED), {SAME: passes(), BOUNDED: passes(), FASTER: fails("not judged")})
    assert "without the order the grader had just added" in found[FASTER].message
