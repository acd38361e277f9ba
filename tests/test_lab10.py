"""Lab 10's own tables: the starter's reasons, a wrong hotspot, a half fix and a wrong report, each failing
on the right check (tests/test_labs.py: the solution passes, the starter fails)."""
from labtools import SLOW, expect, fails, graded, passes, submission

from perflab.grading import grader

HOTSPOT = ("hotspot", "matches the grader's own profile")
SAME = ("fix", "same report as the original")
STATEMENTS = ("fix", "no N+1: at most 10 statements")
FASTER = ("fix", "at least 3x faster than the original")
MEMORY = ("fix", "peak memory at most 30% of the original's")

# The guess the notebook warns about: the list lookup looks guilty, the profile says otherwise.
WRONG_GUESS = 'TOP_HOTSPOT = "is_key_account"'
# Half a fix: the N+1 is gone (one query for every order's items), but every column of every order is
# still loaded into a list of dicts first.
HALF_FIX = '''
def basket_report(conn, limit=4000):
    orders = load_orders(conn, limit)
    account_ids = set(key_account_ids(conn))
    wanted = [o["id"] for o in orders if o["customer_id"] in account_ids]
    summaries = {row[0]: row[1:] for row in conn.execute(
        "SELECT order_id, count(*), sum(quantity * unit_price) FROM order_items "
        "WHERE order_id = ANY(%s) GROUP BY order_id", (wanted,))}
    report, total_items, total_value = "", 0, 0
    for order in orders:
        if order["customer_id"] in account_ids:
            items, value = summaries.get(order["id"], (0, 0))
            report += format_line(order["id"], order["created_at"], items, value)
            total_items += items
            total_value += value
    report += f"{'total':>9}  {'':10}  {total_items:>3} items  {total_value:>10}\\n"
    return report
'''
# Fast but wrong: oldest first instead of newest first.
WRONG_ORDER = '''
def basket_report(conn, limit=4000):
    sql = """
        SELECT o.id, o.created_at, count(i.id), coalesce(sum(i.quantity * i.unit_price), 0)
        FROM (SELECT id, customer_id, created_at FROM orders ORDER BY id DESC LIMIT %s) AS o
        JOIN (SELECT id FROM customers WHERE tier = 'enterprise' ORDER BY id LIMIT 200) AS c ON c.id = o.customer_id
        LEFT JOIN order_items AS i ON i.order_id = o.id
        GROUP BY o.id, o.created_at ORDER BY o.id"""
    lines, total_items, total_value = [], 0, 0
    for order_id, placed, items, value in conn.execute(sql, (limit,)):
        lines.append(format_line(order_id, placed, items, value))
        total_items += items
        total_value += value
    lines.append(f"{'total':>9}  {'':10}  {total_items:>3} items  {total_value:>10}\\n")
    return "".join(lines)
'''


def test_the_starter_fails_every_performance_check(tiny_data):
    # The starter is the original: right, slow.
    expect(graded("10", "starter"), {HOTSPOT: fails(), SAME: passes(), STATEMENTS: fails("N+1"), FASTER: SLOW,
                                     MEMORY: fails()})


def test_wrong_guess_and_half_fix_fail_on_the_right_checks(tiny_data, tmp_path):
    report = grader.grade(submission("10", tmp_path, {"TOP_HOTSPOT =": WRONG_GUESS, "def basket_report": HALF_FIX}))
    # The N+1 is fixed, the memory blow-up is not.
    expect(report, {HOTSPOT: fails("order_items_summary"), SAME: passes(), STATEMENTS: passes(),
                    MEMORY: fails("stream")})


def test_fast_but_wrong_report_fails_correctness(tiny_data, tmp_path):
    report = grader.grade(submission("10", tmp_path, {"def basket_report": WRONG_ORDER}))
    expect(report, {HOTSPOT: passes(), SAME: fails("line 1"), FASTER: fails("not judged")})
