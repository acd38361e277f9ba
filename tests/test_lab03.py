"""Lab 03's own tables: the starter's reasons, a right-but-slow and an index-everything answer, and a
statement that is not an index (tests/test_labs.py: the solution passes, the starter fails)."""
from labtools import SLOW, TIMED, expect, fails, graded, passes, submission

from perflab.grading import grader

BUDGET = ("tail", "only indexes on orders, within the budget")
PLANS = ("tail", "plans read few rows for the big tenant, no Seq Scan")
P99 = ("tail", "the big tenant's p99 close to the small tenants'")


def _grade(tmp_path, source: str):
    return grader.grade(submission("03", tmp_path, {"TAIL_INDEXES =": source}))


def test_the_solution_passes_on_counted_checks(tiny_data):
    # p99 is judged only on a quiet run; a noisy one is "inconclusive — rerun", never a pass or a fail
    expect(graded("03", "solution"), {BUDGET: passes(), PLANS: passes(), P99: TIMED})


def test_the_starter_fails_with_the_reasons(tiny_data):
    expect(graded("03", "starter"), {BUDGET: fails("creates no index"), PLANS: fails("rows of orders"), P99: SLOW})


def test_right_but_slow_fails_on_rows_read(tiny_data, tmp_path):
    """Indexes on the right columns in an order that cannot serve ORDER BY … LIMIT: the big tenant still sorts."""
    slow = ('TAIL_INDEXES = ["CREATE INDEX orders_cs_idx ON orders (customer_id, status)", '
            '"CREATE INDEX orders_pending_idx ON orders (customer_id) WHERE status = \'pending\'"]')
    expect(_grade(tmp_path, slow), {BUDGET: passes(), PLANS: fails("big tenant", "rows of orders"), P99: SLOW})


def test_index_everything_fails_the_budget(tiny_data, tmp_path):
    everything = ('TAIL_INDEXES = ["CREATE INDEX a ON orders (customer_id, total)", '
                  '"CREATE INDEX b ON orders (customer_id, status, created_at)", '
                  '"CREATE INDEX c ON orders (status, customer_id, created_at)", '
                  '"CREATE INDEX d ON orders (customer_id, created_at) WHERE status = \'pending\'"]')
    expect(_grade(tmp_path, everything), {BUDGET: fails("the budget is 2"), PLANS: passes()})


def test_not_an_index_is_refused(tiny_data, tmp_path):
    expect(_grade(tmp_path, 'TAIL_INDEXES = ["DROP TABLE order_items"]'), {BUDGET: fails("CREATE INDEX")})
