"""Lab 05's own tables: the starter's reasons, a leaking pool, a pool per request and a wrong answer, each
failing on the contract it breaks (tests/test_labs.py: the solution passes, the starter fails).

Counters decide (connections the server saw, requests left waiting); the speed check may say
"inconclusive" on a noisy machine, which is not a pass and not a failure.
"""
from labtools import SLOW, TIMED, expect, fails, graded, passes, submission

from perflab.grading import grader

SPEED = "more requests per second than the original"
FEW = "at most 4 connections for 200 concurrent requests"
SAME = "the same answers as the original"
LEAKS = "no leaked connections"


def _grade(tmp_path, body: str):
    """The solution with open_app's body replaced, graded."""
    source = 'def open_app(dsn):\n    """A submission."""\n' + body
    return grader.grade(submission("05", tmp_path, {lambda cell: cell.startswith("def open_app(dsn):"): source}))


def test_the_solution_passes_on_counted_checks(tiny_data):
    # On a quiet machine the whole lab passes; on a noisy one the speed check may only be inconclusive.
    expect(graded("05", "solution"), {SAME: passes(), FEW: passes(), LEAKS: passes(), SPEED: TIMED})


def test_the_starter_fails_on_connections_counted_by_the_server(tiny_data):
    expect(graded("05", "starter"), {SAME: passes(), FEW: fails("200 connections", "connection per request"),
                                     SPEED: SLOW})


def test_leaking_pool_fails_the_leak_check(tiny_data, tmp_path):
    leak = '''    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(dsn, min_size=1, max_size=POOL_SIZE, timeout=2, open=True)

    def handle(customer_id):
        conn = pool.getconn()                      # borrowed, never given back
        return conn.execute(ORDER_SUMMARY_SQL, (customer_id,)).fetchone()

    return handle, pool.close
'''
    # It never opens more than 4... but it never returns them either.
    found = expect(_grade(tmp_path, leak), {FEW: passes(), LEAKS: fails()})
    assert "PoolTimeout" in found[LEAKS].message or "waiting" in found[LEAKS].message


def test_pool_per_request_is_right_but_opens_a_connection_each_time(tiny_data, tmp_path):
    per_request = '''    from psycopg_pool import ConnectionPool

    def handle(customer_id):
        with ConnectionPool(dsn, min_size=1, max_size=POOL_SIZE) as pool:
            with pool.connection() as conn:
                return conn.execute(ORDER_SUMMARY_SQL, (customer_id,)).fetchone()

    return handle, lambda: None
'''
    expect(_grade(tmp_path, per_request), {SAME: passes(), FEW: fails(), SPEED: SLOW})


def test_wrong_answer_fails_correctness(tiny_data, tmp_path):
    wrong = '''    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(dsn, min_size=1, max_size=POOL_SIZE, open=True)
    sql = ORDER_SUMMARY_SQL.replace("WHERE", "WHERE status <> 'cancelled' AND")

    def handle(customer_id):
        with pool.connection() as conn:
            return conn.execute(sql, (customer_id,)).fetchone()

    return handle, pool.close
'''
    expect(_grade(tmp_path, wrong), {SAME: fails("the original handler returns"), FEW: passes(),
                                     SPEED: fails("not judged")})
