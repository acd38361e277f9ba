"""Lab 01's own tables: the starter's reasons, a slow-but-right and a fast-but-wrong answer, two covering
indexes that miss, and an answer that tries to destroy the course data (tests/test_labs.py: the solution
passes, the starter fails).

An answer the notebook only assigns (a query or an index's DDL, run by the checks on their own clones) is
judged by the checks the test reads (`labtools.judge`, no notebook run); the starter retyped (is it an
attempt?) and the answers whose cells or queries do harm while the notebook runs are graded whole."""
from labtools import SLOW, TIMED, Expected, expect, fails, graded, judge, passes, submission

from perflab.grading import grader

SAME = ("march", "same rows as the original")
USES_INDEX = ("march", "the plan uses the index")
FAST = ("march", "faster than the original, as fast as an index allows")
INDEX_ONLY = ("covering", "Index Only Scan with no heap fetches")
FEW_PAGES = ("covering", "reads few pages for the biggest customer")


RECENT_SAME = ("recent", "same rows as the original")
RECENT_USES_INDEX = ("recent", "the plan uses the index")
RECENT_FAST = ("recent", "faster than the original, as fast as an index allows")
COMPACT = ("covering", "no bigger than it needs to be")


def _grade(tmp_path, name: str, source: str):
    """The solution with the answer cell that defines ``name`` replaced, graded."""
    return grader.grade(submission("01", tmp_path, {f"{name} =": source}))


def _grade_many(tmp_path, **sources):
    """The solution with several answer cells replaced (one grading run judges them all)."""
    return grader.grade(submission("01", tmp_path, {f"{name} =": source for name, source in sources.items()}))


def test_the_solution_passes_with_only_the_timing_check_maybe_inconclusive(tiny_data):
    report = graded("01", "solution")
    expect(report, {(o.exercise, o.name): TIMED if o.name == FAST[1] else passes() for o in report.checks})


def test_the_starter_scores_nothing(tiny_data):
    report = graded("01", "starter")
    expect(report, {USES_INDEX: fails("still the starter code"), INDEX_ONLY: fails("still the starter code")})
    assert report.score == 0, report.text()


def test_the_starters_query_retyped_is_judged_with_the_reasons(tiny_data, tmp_path):
    """Not the starter as given (lower case), so it is judged: right rows, but the wrapped column scans."""
    retyped = ('MARCH_2024_SQL = """select id, customer_id, total from orders '
               'where extract(year from created_at) = 2024 and extract(month from created_at) = 3"""')
    expect(_grade(tmp_path, "MARCH_2024_SQL", retyped), {SAME: passes(), USES_INDEX: fails("Seq Scan"), FAST: SLOW})


def test_right_but_slow_fails_the_performance_contract(tiny_data):
    slow = ("SELECT id, customer_id, total FROM orders "
            "WHERE created_at::date >= '2024-03-01' AND created_at::date < '2024-04-01'")
    expect(judge("01", [SAME, USES_INDEX, FAST], MARCH_2024_SQL=slow), {SAME: passes(), USES_INDEX: fails(), FAST: SLOW})


def test_fast_but_wrong_fails_correctness(tiny_data):
    wrong = ("SELECT id, customer_id, total FROM orders "
             "WHERE created_at >= '2024-03-01' AND created_at <= '2024-03-31'")  # loses 31 March
    expect(judge("01", [SAME, USES_INDEX], MARCH_2024_SQL=wrong), {SAME: fails("missing"), USES_INDEX: passes()})


def test_badly_ordered_covering_index_reads_too_many_pages(tiny_data):
    ddl = "CREATE INDEX orders_account_idx ON orders (customer_id) INCLUDE (created_at, total)"
    found = expect(judge("01", [INDEX_ONLY, FEW_PAGES], COVERING_INDEX_DDL=ddl), {FEW_PAGES: fails()})
    # It covers the query, but keyed by customer_id alone it reads all of customer 1's entries,
    # so the planner may even prefer another index for that customer: either way, not full marks.
    only = found[INDEX_ONLY]
    assert only.status == "passed" or "Key it by the column compared with = first" in only.message


def test_index_missing_a_returned_column_is_not_index_only(tiny_data):
    ddl = "CREATE INDEX orders_account_idx ON orders (customer_id, created_at)"
    expect(judge("01", [INDEX_ONLY], COVERING_INDEX_DDL=ddl), {INDEX_ONLY: fails("does not hold total")})


def test_destructive_answer_cannot_touch_the_course_data(tiny_data, tmp_path, course_stack):
    from perflab import datasets, stack

    evil = ('import os, psycopg\npsycopg.connect(os.environ["DATABASE_URL"], autocommit=True).execute("DROP TABLE order_items")\n'
            'COVERING_INDEX_DDL = "DROP TABLE orders"')
    expect(_grade(tmp_path, "COVERING_INDEX_DDL", evil), {INDEX_ONLY: fails()})
    with datasets.throwaway("tiny") as dsn, stack.connect(dsn=dsn) as conn:
        assert conn.execute("SELECT count(*) FROM order_items").fetchone()[0] > 0


def test_hostile_sql_answers_are_refused_and_damage_nothing(tiny_data, tmp_path, course_stack):
    """One statement only, read only, rows capped, state kept between timed calls caught, an index
    smuggled onto another table refused; the course data is untouched."""
    from perflab import datasets, stack

    chained = ('MARCH_2024_SQL = """SELECT id, customer_id, total FROM orders '
               "WHERE created_at >= '2024-03-01' AND created_at < '2024-04-01'; DROP TABLE order_items\"\"\"")
    # Right rows on the first call, none afterwards (a session setting remembers the first call).
    cached = ('RECENT_SQL = """SELECT id, status, total FROM orders '
              "WHERE created_at >= timestamptz '2025-06-30 00:00:00+00' - interval '30 days' "
              "AND created_at < timestamptz '2025-06-30 00:00:00+00' "
              "AND coalesce(current_setting('lab.calls', true), '') = '' "
              "UNION ALL SELECT NULL, NULL, NULL WHERE set_config('lab.calls', '1', false) IS NULL\"\"\"")
    elsewhere = ('COVERING_INDEX_DDL = "CREATE INDEX orders_account_idx ON customers (id) '
                 "WHERE 'ON orders' <> ''\"")
    report = _grade_many(tmp_path, MARCH_2024_SQL=chained, RECENT_SQL=cached, COVERING_INDEX_DDL=elsewhere)
    expect(report, {SAME: fails("multiple commands"), USES_INDEX: fails(), FAST: fails(),
                    RECENT_SAME: passes(), RECENT_USES_INDEX: passes(),
                    RECENT_FAST: Expected(frozenset({"failed"}), ("later call",)),
                    INDEX_ONLY: fails("exactly one index on orders"), COMPACT: fails()})
    with datasets.throwaway("tiny") as dsn, stack.connect(dsn=dsn) as conn:
        assert conn.execute("SELECT count(*) FROM order_items").fetchone()[0] > 0


def test_writes_and_floods_fail_fast(tiny_data, tmp_path):
    """A statement that writes fails in the read-only transaction; a cross join is cut off, not fetched."""
    writes = 'MARCH_2024_SQL = "SELECT id, customer_id, total FROM orders WHERE lo_create(0) > 0"'
    flood = 'RECENT_SQL = "SELECT a.id, b.status, b.total FROM orders a, orders b"'
    report = _grade_many(tmp_path, MARCH_2024_SQL=writes, RECENT_SQL=flood)
    expect(report, {SAME: fails("read-only"), RECENT_SAME: fails("more than")})
    assert report.seconds < 300, report.text()
