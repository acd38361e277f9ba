"""Lab 01's grader: fails the starter, passes the solution, fails a slow-but-right and a fast-but-wrong answer."""
import json
from pathlib import Path

import pytest
from labtools import outcomes as checks_by_name, submission

from perflab import paths
from perflab.grading import grader

SOLUTION = paths.SOLUTIONS_DIR / "01_let_the_index_work.ipynb"
STARTER = paths.LABS_DIR / "01_let_the_index_work.ipynb"


def _with_answer(tmp_path: Path, name: str, source: str) -> Path:
    """The solution notebook with the answer cell that defines ``name`` replaced."""
    return submission(SOLUTION, tmp_path, lambda cell: f"{name} =" in cell and "BEGIN SOLUTION" in cell, source)


@pytest.fixture(scope="module")
def solution_report(tiny_data):
    return grader.grade(SOLUTION)


TIMING_CHECK = "faster than the original, as fast as an index allows"


def test_solution_passes_every_check(solution_report):
    """Every check passes; a timing check may only be inconclusive (machine too busy), never failed."""
    not_passed = {(o.exercise, o.name): o.status for o in solution_report.checks if o.status != "passed"}
    assert all(status == "inconclusive" and name == TIMING_CHECK for (_, name), status in not_passed.items()), \
        solution_report.text()
    assert solution_report.exit_code == (0 if not not_passed else 3)


def test_starter_fails(tiny_data, tmp_path):
    report = grader.grade(STARTER, out_dir=tmp_path)
    assert not report.passed and report.exit_code == 1
    outcomes = checks_by_name(report)
    assert outcomes[("march", "the plan uses the index")].status == "failed"
    assert "Seq Scan" in outcomes[("march", "the plan uses the index")].message
    assert outcomes[("covering", "Index Only Scan with no heap fetches")].status == "failed"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["score"] < results.get("max_score", 12) and results["tests"]


def test_right_but_slow_fails_the_performance_contract(tiny_data, tmp_path):
    slow = ('MARCH_2024_SQL = """SELECT id, customer_id, total FROM orders '
            "WHERE created_at::date >= '2024-03-01' AND created_at::date < '2024-04-01'\"\"\"")
    outcomes = checks_by_name(grader.grade(_with_answer(tmp_path, "MARCH_2024_SQL", slow)))
    assert outcomes[("march", "same rows as the original")].status == "passed"
    assert outcomes[("march", "the plan uses the index")].status == "failed"
    assert outcomes[("march", "faster than the original, as fast as an index allows")].status in ("failed", "inconclusive")


def test_fast_but_wrong_fails_correctness(tiny_data, tmp_path):
    wrong = ('MARCH_2024_SQL = """SELECT id, customer_id, total FROM orders '
             "WHERE created_at >= '2024-03-01' AND created_at <= '2024-03-31'\"\"\"")  # loses 31 March
    outcomes = checks_by_name(grader.grade(_with_answer(tmp_path, "MARCH_2024_SQL", wrong)))
    failed = outcomes[("march", "same rows as the original")]
    assert failed.status == "failed" and "missing" in failed.message
    assert outcomes[("march", "the plan uses the index")].status == "passed"


def test_badly_ordered_covering_index_reads_too_many_pages(tiny_data, tmp_path):
    ddl = 'COVERING_INDEX_DDL = "CREATE INDEX orders_account_idx ON orders (customer_id) INCLUDE (created_at, total)"'
    outcomes = checks_by_name(grader.grade(_with_answer(tmp_path, "COVERING_INDEX_DDL", ddl)))
    # It covers the query, but keyed by customer_id alone it reads all of customer 1's entries,
    # so the planner may even prefer another index for that customer: either way, not full marks.
    assert outcomes[("covering", "reads few pages for the biggest customer")].status == "failed"
    only = outcomes[("covering", "Index Only Scan with no heap fetches")]
    assert only.status == "passed" or "Key it by the column compared with = first" in only.message


def test_index_missing_a_returned_column_is_not_index_only(tiny_data, tmp_path):
    ddl = 'COVERING_INDEX_DDL = "CREATE INDEX orders_account_idx ON orders (customer_id, created_at)"'
    outcomes = checks_by_name(grader.grade(_with_answer(tmp_path, "COVERING_INDEX_DDL", ddl)))
    only = outcomes[("covering", "Index Only Scan with no heap fetches")]
    assert only.status == "failed" and "does not hold total" in only.message


def test_destructive_answer_cannot_touch_the_course_data(tiny_data, tmp_path, course_stack):
    import psycopg

    from perflab import datasets

    evil = 'import os, psycopg\npsycopg.connect(os.environ["DATABASE_URL"], autocommit=True).execute("DROP TABLE order_items")\nCOVERING_INDEX_DDL = "DROP TABLE orders"'
    report = grader.grade(_with_answer(tmp_path, "COVERING_INDEX_DDL", evil))
    assert checks_by_name(report)[("covering", "Index Only Scan with no heap fetches")].status == "failed"
    with datasets.throwaway("tiny") as dsn, psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM order_items").fetchone()[0] > 0
