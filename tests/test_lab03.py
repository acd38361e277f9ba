"""Lab 03's grader: fails the starter, passes the solution, fails a right-but-slow and an index-everything answer."""
from pathlib import Path


from labtools import outcomes as checks_by_name, submission

from perflab import paths
from perflab.grading import grader

SOLUTION = paths.SOLUTIONS_DIR / "03_tail_latency.ipynb"
STARTER = paths.LABS_DIR / "03_tail_latency.ipynb"

BUDGET = ("tail", "only indexes on orders, within the budget")
PLANS = ("tail", "plans read few rows for the big tenant, no Seq Scan")
P99 = ("tail", "the big tenant's p99 close to the small tenants'")


def _with_answer(tmp_path: Path, source: str) -> Path:
    return submission(SOLUTION, tmp_path, lambda cell: "TAIL_INDEXES =" in cell and "BEGIN SOLUTION" in cell, source)


def test_solution_passes_every_check(tiny_data):
    report = grader.grade(SOLUTION)
    outcomes = checks_by_name(report)
    assert outcomes[BUDGET].status == "passed", report.text()
    assert outcomes[PLANS].status == "passed", report.text()
    # p99 is judged only on a quiet run; a noisy one is "inconclusive — rerun", never a pass or a fail
    assert outcomes[P99].status in ("passed", "inconclusive"), report.text()
    assert report.passed or outcomes[P99].status == "inconclusive"


def test_starter_fails(tiny_data, tmp_path):
    report = grader.grade(STARTER, out_dir=tmp_path)
    assert not report.passed and report.exit_code == 1
    outcomes = checks_by_name(report)
    assert outcomes[BUDGET].status == "failed" and "creates no index" in outcomes[BUDGET].message
    assert outcomes[PLANS].status == "failed" and "rows of orders" in outcomes[PLANS].message
    assert outcomes[P99].status in ("failed", "inconclusive")


def test_right_but_slow_fails_on_rows_read(tiny_data, tmp_path):
    """Indexes on the right columns in an order that cannot serve ORDER BY … LIMIT: the big tenant still sorts."""
    slow = ('TAIL_INDEXES = ["CREATE INDEX orders_cs_idx ON orders (customer_id, status)", '
            '"CREATE INDEX orders_pending_idx ON orders (customer_id) WHERE status = \'pending\'"]')
    report = grader.grade(_with_answer(tmp_path, slow))
    outcomes = checks_by_name(report)
    assert outcomes[BUDGET].status == "passed"
    plans = outcomes[PLANS]
    assert plans.status == "failed" and "big tenant" in plans.message and "rows of orders" in plans.message
    assert outcomes[P99].status in ("failed", "inconclusive")


def test_index_everything_fails_the_budget(tiny_data, tmp_path):
    everything = ('TAIL_INDEXES = ["CREATE INDEX a ON orders (customer_id, total)", '
                  '"CREATE INDEX b ON orders (customer_id, status, created_at)", '
                  '"CREATE INDEX c ON orders (status, customer_id, created_at)", '
                  '"CREATE INDEX d ON orders (customer_id, created_at) WHERE status = \'pending\'"]')
    outcomes = checks_by_name(grader.grade(_with_answer(tmp_path, everything)))
    budget = outcomes[BUDGET]
    assert budget.status == "failed" and "the budget is 2" in budget.message
    assert outcomes[PLANS].status == "passed"


def test_not_an_index_is_refused(tiny_data, tmp_path):
    evil = 'TAIL_INDEXES = ["DROP TABLE order_items"]'
    outcomes = checks_by_name(grader.grade(_with_answer(tmp_path, evil)))
    assert outcomes[BUDGET].status == "failed" and "CREATE INDEX" in outcomes[BUDGET].message
