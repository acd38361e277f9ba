"""Lab 02's grader: fails the starter, passes the solution, fails a right-but-slow and a fast-but-wrong answer."""
from pathlib import Path


from labtools import outcomes as checks_by_name, submission

from perflab import paths
from perflab.grading import grader

SOLUTION = paths.SOLUTIONS_DIR / "02_n_plus_one.ipynb"
STARTER = paths.LABS_DIR / "02_n_plus_one.ipynb"

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


def _with_answer(tmp_path: Path, source: str) -> Path:
    """The solution notebook with the answer cell replaced."""
    return submission(SOLUTION, tmp_path, lambda cell: "def recent_orders_page" in cell and "BEGIN SOLUTION" in cell,
                      source)


SAME = ("endpoint", "the same page as the original")
BOUNDED = ("endpoint", "a bounded number of statements, independent of N")
FASTER = ("endpoint", "faster than the original")


def test_solution_passes_every_check(tiny_data):
    report = grader.grade(SOLUTION)
    outcomes = checks_by_name(report)
    assert outcomes[SAME].status == "passed", report.text()
    assert outcomes[BOUNDED].status == "passed", report.text()
    # Speed is judged only when the reference agrees with itself; a noisy run is "inconclusive — rerun"
    # (exit code 3), never a pass or a fail.
    assert outcomes[FASTER].status in ("passed", "inconclusive"), report.text()
    assert report.exit_code == (0 if outcomes[FASTER].status == "passed" else 3)


def test_starter_fails_and_names_each_lazy_load(tiny_data, tmp_path):
    report = grader.grade(STARTER, out_dir=tmp_path)
    assert not report.passed and report.exit_code == 1
    outcomes = checks_by_name(report)
    assert outcomes[SAME].status == "passed"
    bounded = outcomes[BOUNDED]
    assert bounded.status == "failed"
    assert "statements for 20 orders" in bounded.message
    for attribute in ("`order.customer`", "`order.items`", "`item.product`"):
        assert f"{attribute} is lazy-loaded inside the loop" in bounded.message
    assert outcomes[FASTER].status in ("failed", "inconclusive")


def test_right_but_slow_fails_the_statement_bound(tiny_data, tmp_path):
    outcomes = checks_by_name(grader.grade(_with_answer(tmp_path, RIGHT_BUT_SLOW)))
    assert outcomes[SAME].status == "passed"
    bounded = outcomes[BOUNDED]
    assert bounded.status == "failed"
    assert "`item.product` is lazy-loaded inside the loop" in bounded.message
    assert "`order.customer`" not in bounded.message


def test_fast_but_wrong_fails_correctness(tiny_data, tmp_path):
    outcomes = checks_by_name(grader.grade(_with_answer(tmp_path, FAST_BUT_WRONG)))
    same = outcomes[SAME]
    assert same.status == "failed" and "limits *rows*" in same.message
    assert outcomes[BOUNDED].status == "passed"
    assert outcomes[FASTER].status == "failed"
