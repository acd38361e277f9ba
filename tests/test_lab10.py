"""Lab 10's grader: passes the solution; fails the starter, a wrong hotspot, a half fix and a wrong report."""
from pathlib import Path

import nbformat
import pytest

from labtools import outcomes as checks_by_name

from perflab import paths
from perflab.grading import grader

SOLUTION = paths.SOLUTIONS_DIR / "10_profiling.ipynb"
STARTER = paths.LABS_DIR / "10_profiling.ipynb"

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


def _with_answers(tmp_path: Path, replacements: dict[str, str]) -> Path:
    notebook = nbformat.read(SOLUTION, as_version=4)
    for marker, source in replacements.items():
        for cell in notebook.cells:
            if cell.cell_type == "code" and marker in cell.source and "BEGIN SOLUTION" in cell.source:
                cell.source = source
                break
        else:
            raise AssertionError(f"no answer cell with {marker!r}")
    target = tmp_path / "10_submission.ipynb"
    nbformat.write(notebook, target)
    return target




def test_solution_passes_every_check(tiny_data):
    report = grader.grade(SOLUTION)
    if report.status == "inconclusive":
        # The grader's own verdict "too noisy to judge, rerun" (a busy CI machine): rerun once, as a learner would.
        report = grader.grade(SOLUTION)
    assert report.passed, report.text()


def test_starter_fails_every_performance_check(tiny_data):
    report = grader.grade(STARTER)
    outcomes = checks_by_name(report)
    assert not report.passed and report.exit_code == 1
    assert outcomes[HOTSPOT].status == "failed"
    assert outcomes[SAME].status == "passed"          # the starter is the original: right, slow
    assert outcomes[STATEMENTS].status == "failed" and "N+1" in outcomes[STATEMENTS].message
    assert outcomes[FASTER].status in ("failed", "inconclusive")
    assert outcomes[MEMORY].status == "failed"


def test_wrong_guess_and_half_fix_fail_on_the_right_checks(tiny_data, tmp_path):
    report = grader.grade(_with_answers(tmp_path, {"TOP_HOTSPOT =": WRONG_GUESS, "def basket_report": HALF_FIX}))
    outcomes = checks_by_name(report)
    wrong_guess = outcomes[HOTSPOT]
    assert wrong_guess.status == "failed" and "order_items_summary" in wrong_guess.message, wrong_guess.message
    assert outcomes[SAME].status == "passed"
    assert outcomes[STATEMENTS].status == "passed"    # the N+1 is fixed ...
    memory_check = outcomes[MEMORY]
    assert memory_check.status == "failed" and "stream" in memory_check.message   # ... the memory blow-up is not


def test_fast_but_wrong_report_fails_correctness(tiny_data, tmp_path):
    report = grader.grade(_with_answers(tmp_path, {"def basket_report": WRONG_ORDER}))
    outcomes = checks_by_name(report)
    assert outcomes[HOTSPOT].status == "passed"
    assert outcomes[SAME].status == "failed" and "line 1" in outcomes[SAME].message
    assert outcomes[FASTER].status == "failed" and "not judged" in outcomes[FASTER].message
