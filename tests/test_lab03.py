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


def test_the_starter_scores_nothing(tiny_data):
    report = graded("03", "starter")
    expect(report, {BUDGET: fails("still the starter code"), PLANS: fails("still the starter code"),
                    P99: fails("still the starter code")})
    assert report.score == 0, report.text()


def test_no_new_index_is_judged_with_the_reasons(tiny_data, tmp_path):
    """Not the starter's empty list, but it creates nothing (the index exists already): judged, and fails."""
    nothing = 'TAIL_INDEXES = ["CREATE INDEX IF NOT EXISTS orders_customer_id_idx ON orders (customer_id)"]'
    # (its p99 at tiny is a timing: judged by the grader, not pinned by a test beside other test processes)
    expect(_grade(tmp_path, nothing), {BUDGET: fails("creates no index"), PLANS: fails("rows of orders")})


def test_right_but_slow_fails_on_rows_read(tiny_data, tmp_path):
    """Indexes on the right columns in an order that cannot serve ORDER BY … LIMIT: the big tenant still sorts."""
    slow = ('TAIL_INDEXES = ["CREATE INDEX orders_cs_idx ON orders (customer_id, status)", '
            '"CREATE INDEX orders_pending_idx ON orders (customer_id) WHERE status = \'pending\'"]')
    # Its p99 is not judged here: at tiny scale the big tenant's extra sort can stay inside the 3x bound.
    expect(_grade(tmp_path, slow), {BUDGET: passes(), PLANS: fails("big tenant", "rows of orders")})


def test_index_everything_fails_the_budget(tiny_data, tmp_path):
    everything = ('TAIL_INDEXES = ["CREATE INDEX a ON orders (customer_id, total)", '
                  '"CREATE INDEX b ON orders (customer_id, status, created_at)", '
                  '"CREATE INDEX c ON orders (status, customer_id, created_at)", '
                  '"CREATE INDEX d ON orders (customer_id, created_at) WHERE status = \'pending\'"]')
    expect(_grade(tmp_path, everything), {BUDGET: fails("the budget is 2"), PLANS: passes()})


def test_not_an_index_is_refused(tiny_data, tmp_path):
    expect(_grade(tmp_path, 'TAIL_INDEXES = ["DROP TABLE order_items"]'), {BUDGET: fails("CREATE INDEX")})


def test_smuggled_statements_and_other_tables_are_refused(tiny_data, tmp_path, course_stack):
    """A second statement after the index is a syntax error (one statement per DDL); an index on another
    table that passes the text filter (ON orders inside a string) is found in the catalogs and refused;
    the course data is untouched."""
    from perflab import datasets, stack

    chained = ('TAIL_INDEXES = ["CREATE INDEX a ON orders (customer_id, total); DROP TABLE order_items", '
               '"CREATE INDEX b ON orders (customer_id, created_at) WHERE status = \'pending\'"]')
    expect(_grade(tmp_path, chained), {BUDGET: fails("CREATE INDEX"), PLANS: fails("CREATE INDEX"), P99: fails()})
    elsewhere = ('TAIL_INDEXES = ["CREATE INDEX a ON orders (customer_id, total)", '
                 '"CREATE INDEX b ON customers (id) WHERE \'ON orders\' <> \'\'"]')
    expect(_grade(tmp_path, elsewhere), {BUDGET: fails("only create indexes on orders", "b on customers"),
                                         PLANS: fails("only create indexes on orders"), P99: fails()})
    with datasets.throwaway("tiny") as dsn, stack.connect(dsn=dsn) as conn:
        assert conn.execute("SELECT count(*) FROM order_items").fetchone()[0] > 0
