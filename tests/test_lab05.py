"""Lab 05's grader: passes the solution; fails the starter, a leaking pool, a pool per request and a wrong answer.

Counters decide (connections the server saw, requests left waiting); the speed check may say
"inconclusive" on a noisy machine, which is not a pass and not a failure.
"""
from pathlib import Path


from labtools import submission

from perflab import paths
from perflab.grading import grader

SOLUTION = paths.SOLUTIONS_DIR / "05_connection_pooling.ipynb"
STARTER = paths.LABS_DIR / "05_connection_pooling.ipynb"
SPEED = "more requests per second than the original"
FEW = "at most 4 connections for 200 concurrent requests"
SAME = "the same answers as the original"
LEAKS = "no leaked connections"


def _with_open_app(tmp_path: Path, body: str) -> Path:
    """The solution notebook with open_app's body replaced."""
    return submission(SOLUTION, tmp_path, lambda cell: cell.startswith("def open_app(dsn):"),
                      'def open_app(dsn):\n    """A submission."""\n' + body)


def _outcomes(report) -> dict:
    return {o.name: o for o in report.checks}


def test_solution_passes(tiny_data):
    report = grader.grade(SOLUTION)
    outcomes = _outcomes(report)
    for name in (SAME, FEW, LEAKS):
        assert outcomes[name].status == "passed", report.text()
    # On a quiet machine the whole lab passes; on a noisy one the speed check may only be inconclusive.
    assert outcomes[SPEED].status in ("passed", "inconclusive"), report.text()
    assert report.exit_code in (0, 3)


def test_starter_fails_on_connections_counted_by_the_server(tiny_data, tmp_path):
    report = grader.grade(STARTER, out_dir=tmp_path)
    assert not report.passed and report.exit_code == 1
    outcomes = _outcomes(report)
    assert outcomes[SAME].status == "passed"
    assert outcomes[FEW].status == "failed"
    assert "200 connections" in outcomes[FEW].message and "connection per request" in outcomes[FEW].message
    assert outcomes[SPEED].status in ("failed", "inconclusive")
    assert (tmp_path / "results.json").exists()


def test_leaking_pool_fails_the_leak_check(tiny_data, tmp_path):
    leak = '''    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(dsn, min_size=1, max_size=POOL_SIZE, timeout=2, open=True)

    def handle(customer_id):
        conn = pool.getconn()                      # borrowed, never given back
        return conn.execute(ORDER_SUMMARY_SQL, (customer_id,)).fetchone()

    return handle, pool.close
'''
    outcomes = _outcomes(grader.grade(_with_open_app(tmp_path, leak)))
    assert outcomes[FEW].status == "passed"          # it never opens more than 4...
    failed = outcomes[LEAKS]                           # ...but it never returns them either
    assert failed.status == "failed"
    assert "PoolTimeout" in failed.message or "waiting" in failed.message


def test_pool_per_request_is_right_but_opens_a_connection_each_time(tiny_data, tmp_path):
    per_request = '''    from psycopg_pool import ConnectionPool

    def handle(customer_id):
        with ConnectionPool(dsn, min_size=1, max_size=POOL_SIZE) as pool:
            with pool.connection() as conn:
                return conn.execute(ORDER_SUMMARY_SQL, (customer_id,)).fetchone()

    return handle, lambda: None
'''
    outcomes = _outcomes(grader.grade(_with_open_app(tmp_path, per_request)))
    assert outcomes[SAME].status == "passed"
    assert outcomes[FEW].status == "failed"
    assert outcomes[SPEED].status in ("failed", "inconclusive")


def test_wrong_answer_fails_correctness(tiny_data, tmp_path):
    wrong = '''    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(dsn, min_size=1, max_size=POOL_SIZE, open=True)
    sql = ORDER_SUMMARY_SQL.replace("WHERE", "WHERE status <> 'cancelled' AND")

    def handle(customer_id):
        with pool.connection() as conn:
            return conn.execute(sql, (customer_id,)).fetchone()

    return handle, pool.close
'''
    outcomes = _outcomes(grader.grade(_with_open_app(tmp_path, wrong)))
    assert outcomes[SAME].status == "failed" and "the original handler returns" in outcomes[SAME].message
    assert outcomes[FEW].status == "passed"
    assert outcomes[SPEED].status == "failed" and "not judged" in outcomes[SPEED].message
