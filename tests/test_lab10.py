"""Lab 10's own tables: the starter's reasons, a wrong hotspot, a half fix and a wrong report, each failing
on the right check (tests/test_labs.py: the solution passes, the starter fails).

A variant's checks are judged directly (`labtools.judge`: its answers re-created and run in the grader's
sandboxes, as `grader.grade` does after the notebook, without the notebook run and the checks the test does not
read); a variant whose verdict depends on what happens when its function is defined (a default argument that
loads every row) is graded whole."""
from labtools import SLOW, expect, fails, graded, judge, passes, submission

from perflab.grading import grader

HOTSPOT = ("hotspot", "matches the grader's own profile")
SAME = ("fix", "same report as the original")
STATEMENTS = ("fix", "no N+1: at most 10 statements")
FASTER = ("fix", "at least 3x faster than the original")
MEMORY = ("fix", "peak memory at most 30% of the original's")

# The guess the notebook warns about: the list lookup looks guilty, the profile says otherwise.
WRONG_GUESS = "is_key_account"
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


# The starter touched but not fixed (a comment is not enough: the N+1 and the list of every row stay).
TOUCHED_STARTER = '''
def basket_report(conn, limit=4000):
    orders = list(load_orders(conn, limit))
    account_ids = key_account_ids(conn)
    report, total_items, total_value = "", 0, 0
    for order in orders:
        if is_key_account(order["customer_id"], account_ids):
            items, value = order_items_summary(conn, order["id"])
            report += format_line(order["id"], order["created_at"], items, value)
            total_items += items
            total_value += value
    report += f"{'total':>9}  {'':10}  {total_items:>3} items  {total_value:>10}\\n"
    return report
'''
# Right and fast on its first call per limit, then the kept report (after a cheap statement): the grader's
# fresh order before every call makes every kept report stale.
CACHED = '''
def basket_report(conn, limit=4000, _kept={}):
    if limit not in _kept:
        sql = """
            SELECT o.id, o.created_at, count(i.id), coalesce(sum(i.quantity * i.unit_price), 0)
            FROM (SELECT id, customer_id, created_at FROM orders ORDER BY id DESC LIMIT %s) AS o
            JOIN (SELECT id FROM customers WHERE tier = 'enterprise' ORDER BY id LIMIT 200) AS c ON c.id = o.customer_id
            LEFT JOIN order_items AS i ON i.order_id = o.id
            GROUP BY o.id, o.created_at ORDER BY o.id DESC"""
        lines, total_items, total_value = [], 0, 0
        for order_id, placed, items, value in conn.execute(sql, (limit,)):
            lines.append(format_line(order_id, placed, items, value))
            total_items += items
            total_value += value
        lines.append(f"{'total':>9}  {'':10}  {total_items:>3} items  {total_value:>10}\\n")
        _kept[limit] = "".join(lines)
    conn.execute("SELECT 1")
    return _kept[limit]
'''
# Right, but every row is loaded in a child process, where the parent's memory (tracemalloc and its
# resident size alike) does not see it: the grader sees the child's work and fails the memory check.
MEMORY_IN_A_CHILD = '''def basket_report(conn, limit=4000):
    import subprocess, sys, textwrap
    child = textwrap.dedent("""
    import os, sys, psycopg
    conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    limit = int(sys.argv[1])
    orders = conn.execute("SELECT * FROM orders ORDER BY id DESC LIMIT %s", (limit,)).fetchall()
    keys = {r[0] for r in conn.execute("SELECT id FROM customers WHERE tier = 'enterprise' ORDER BY id LIMIT 200")}
    sums = {r[0]: r[1:] for r in conn.execute(
        "SELECT order_id, count(*), sum(quantity * unit_price) FROM order_items GROUP BY order_id")}
    lines, total_items, total_value = [], 0, 0
    for o in orders:
        if o[1] in keys:
            items, value = sums.get(o[0], (0, 0))
            lines.append(f"{o[0]:>9}  {o[3]:%Y-%m-%d}  {items:>3} items  {value:>10}\\\\n")
            total_items += items
            total_value += value
    lines.append(f"{'total':>9}  {'':10}  {total_items:>3} items  {total_value:>10}\\\\n")
    sys.stdout.write("".join(lines))
    """)
    return subprocess.run([sys.executable, "-c", child, str(limit)], capture_output=True, text=True,
                          check=True).stdout
'''
# Loads every row when the function is defined (a default argument), then only the newer orders per call:
# the call itself needs little memory, but the process held it all before: the grader counts that too.
PREFETCH_AT_LOAD = '''
def basket_report(conn, limit=4000, _rows=__import__("psycopg").connect(__import__("os").environ["DATABASE_URL"], autocommit=True).execute("SELECT * FROM orders ORDER BY id DESC LIMIT 5000").fetchall()):
    newer = conn.execute("SELECT * FROM orders WHERE id > %s ORDER BY id DESC", (_rows[0][0],)).fetchall()
    orders = (newer + _rows)[:limit]
    keys = {r[0] for r in conn.execute("SELECT id FROM customers WHERE tier = 'enterprise' ORDER BY id LIMIT 200")}
    wanted = [o[0] for o in orders if o[1] in keys]
    sums = {r[0]: r[1:] for r in conn.execute(
        "SELECT order_id, count(*), sum(quantity * unit_price) FROM order_items WHERE order_id = ANY(%s) GROUP BY order_id", (wanted,))}
    lines, total_items, total_value = [], 0, 0
    for o in orders:
        if o[1] in keys:
            items, value = sums.get(o[0], (0, 0))
            lines.append(format_line(o[0], o[3], items, value))
            total_items += items
            total_value += value
    lines.append(f"{'total':>9}  {'':10}  {total_items:>3} items  {total_value:>10}\\n")
    return "".join(lines)
'''


def test_the_untouched_starter_scores_zero(tiny_data):
    report = graded("10", "starter")
    expect(report, {HOTSPOT: fails("still the starter code"), SAME: fails("still the starter code"),
                    STATEMENTS: fails("still the starter code"), FASTER: fails("still the starter code"),
                    MEMORY: fails("still the starter code")})
    assert report.score == 0, report.text()


def test_an_unfixed_attempt_fails_every_performance_check(tiny_data):
    # The original, touched: right, slow.
    judged = judge("10", [SAME, STATEMENTS, FASTER, MEMORY], basket_report=TOUCHED_STARTER)
    expect(judged, {SAME: passes(), STATEMENTS: fails("N+1"), FASTER: SLOW, MEMORY: fails()})


def test_wrong_guess_and_half_fix_fail_on_the_right_checks(tiny_data):
    judged = judge("10", [HOTSPOT, SAME, STATEMENTS, MEMORY], TOP_HOTSPOT=WRONG_GUESS, basket_report=HALF_FIX)
    # The N+1 is fixed, the memory blow-up is not.
    expect(judged, {HOTSPOT: fails("order_items_summary"), SAME: passes(), STATEMENTS: passes(),
                    MEMORY: fails("stream")})


def test_fast_but_wrong_report_fails_correctness(tiny_data):
    judged = judge("10", [HOTSPOT, SAME, FASTER], basket_report=WRONG_ORDER)
    expect(judged, {HOTSPOT: passes(), SAME: fails("line 1"), FASTER: fails("not judged")})


def test_a_report_cached_across_calls_is_not_judged_fast(tiny_data):
    found = expect(judge("10", [SAME, STATEMENTS, FASTER], basket_report=CACHED),
                   {SAME: passes(), STATEMENTS: passes(), FASTER: fails("not judged")})
    assert "without the order the grader had just added" in found[FASTER].message


def test_memory_moved_to_a_child_process_fails(tiny_data):
    expect(judge("10", [SAME, MEMORY], basket_report=MEMORY_IN_A_CHILD),
           {SAME: passes(), MEMORY: fails("another process")})


def test_memory_held_from_a_default_argument_counts(tiny_data, tmp_path):
    # Graded whole: the rows are loaded when the function is defined, in the kernel as in the sandbox.
    report = grader.grade(submission("10", tmp_path, {"def basket_report": PREFETCH_AT_LOAD}))
    expect(report, {SAME: passes(), MEMORY: fails("stream")})
