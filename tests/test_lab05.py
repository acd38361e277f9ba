"""Lab 05's own tables: the starter's reasons, a leaking pool, a pool per request, a wrong answer and a few
cheats, each failing on the contract it breaks (tests/test_labs.py: the solution passes, the starter fails).

Counters decide, counted from outside the sandbox by the submission's database role (connections in the
server's log, backends in pg_stat_activity, orders queries in the log); the speed check may say
"inconclusive" on a noisy machine, which is not a pass and not a failure.

A variant is judged by the checks the test reads (`labtools.judge`: open_app re-created and called in the
grader's sandboxes, as `grader.grade` does once the notebook has run); the two that act when the function is
defined or first called against the grader (connections opened at load time, traps planted for the grader's
superuser connection) are graded whole.
"""
from labtools import SLOW, TIMED, expect, fails, graded, judge, passes, submission

from perflab.grading import grader

SPEED = "more requests per second than the original"
FEW = "at most 4 connections for 200 concurrent requests"
SAME = "the same answers as the original"
LEAKS = "no leaked connections"


def _judge(body: str, checks=(SAME, FEW, LEAKS, SPEED)):
    """The solution with open_app's body replaced, judged by ``checks``."""
    return judge("05", list(checks), open_app='def open_app(dsn):\n    """A submission."""\n' + body)


def test_the_solution_passes_on_counted_checks(tiny_data):
    # On a quiet machine the whole lab passes; on a noisy one the speed check may only be inconclusive.
    expect(graded("05", "solution"), {SAME: passes(), FEW: passes("counted by the server"), LEAKS: passes(),
                                      SPEED: TIMED})


def test_the_untouched_starter_scores_zero(tiny_data):
    report = graded("05", "starter")
    assert report.score == 0, report.text()
    expect(report, {SAME: fails("not attempted"), FEW: fails("not attempted"), LEAKS: fails("not attempted"),
                    SPEED: fails("not attempted")})


def test_a_connection_per_request_fails_on_connections_counted_by_the_server(tiny_data):
    per_request = '''    import psycopg

    def handle(customer_id):
        with psycopg.connect(dsn) as connection:          # the starter's code, touched
            return connection.execute(ORDER_SUMMARY_SQL, (customer_id,)).fetchone()

    return handle, lambda: None
'''
    expect(_judge(per_request), {SAME: passes(), FEW: fails("200 connections", "connection per request"),
                                           LEAKS: passes(), SPEED: SLOW})


def test_leaking_pool_fails_the_leak_check(tiny_data):
    leak = '''    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(dsn, min_size=1, max_size=POOL_SIZE, timeout=2, open=True)

    def handle(customer_id):
        conn = pool.getconn()                      # borrowed, never given back
        return conn.execute(ORDER_SUMMARY_SQL, (customer_id,)).fetchone()

    return handle, pool.close
'''
    # It never opens more than 4... but it never returns them either.
    found = expect(_judge(leak, (FEW, LEAKS)), {FEW: passes(), LEAKS: fails()})
    assert "PoolTimeout" in found[LEAKS].message or "waiting" in found[LEAKS].message


def test_pool_per_request_is_right_but_opens_a_connection_each_time(tiny_data):
    per_request = '''    from psycopg_pool import ConnectionPool

    def handle(customer_id):
        with ConnectionPool(dsn, min_size=1, max_size=POOL_SIZE) as pool:
            with pool.connection() as conn:
                return conn.execute(ORDER_SUMMARY_SQL, (customer_id,)).fetchone()

    return handle, lambda: None
'''
    expect(_judge(per_request, (SAME, FEW, SPEED)), {SAME: passes(), FEW: fails(), SPEED: SLOW})


def test_wrong_answer_fails_correctness(tiny_data):
    wrong = '''    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(dsn, min_size=1, max_size=POOL_SIZE, open=True)
    sql = ORDER_SUMMARY_SQL.replace("WHERE", "WHERE status <> 'cancelled' AND")

    def handle(customer_id):
        with pool.connection() as conn:
            return conn.execute(sql, (customer_id,)).fetchone()

    return handle, pool.close
'''
    expect(_judge(wrong, (SAME, FEW, SPEED)), {SAME: fails("the original handler returns"), FEW: passes(),
                                     SPEED: fails("not judged")})


def test_a_cache_of_every_answer_is_not_a_pool(tiny_data):
    """One query at start-up, then answers from a dict: one connection, right answers, very fast; the
    server's log shows no query per request."""
    cache = '''    from decimal import Decimal

    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT customer_id, count(*), coalesce(sum(total), 0) FROM orders "
                            "GROUP BY customer_id").fetchall()
    known = {customer: (count, total) for customer, count, total in rows}

    def handle(customer_id):
        return known.get(customer_id, (0, Decimal(0)))

    return handle, lambda: None
'''
    expect(_judge(cache), {SAME: passes(), FEW: fails("orders queries"), LEAKS: fails("query"),
                                     SPEED: fails()})


def test_connections_opened_at_load_time_and_a_replaced_driver_are_counted(tiny_data, tmp_path):
    """A default argument opens 12 connections when the function is re-created (before anything is counted),
    and open_app replaces the sandbox's burst driver with one that reports success without a request."""
    cheat = '''    import sys

    drivers = sys.modules.get("perflab.topics.t05_pooling.drivers")
    if drivers is not None:
        def burst(answers, name, customers, threads, timeout):
            rows = [[1, "1.00"] for _ in customers]
            return {"answers": rows, "finished": [True] * len(customers), "errors": [], "unfinished": 0}
        drivers.burst = burst
    connections = _opened
    turn = iter(range(10**9))

    def handle(customer_id):
        return connections[next(turn) % len(connections)].execute(ORDER_SUMMARY_SQL, (customer_id,)).fetchone()

    return handle, lambda: None
'''
    source = ('def open_app(dsn, _opened=[psycopg.connect(__import__("os").environ["DATABASE_URL"], autocommit=True) '
              'for _ in range(12)]):\n    """A submission."""\n' + cheat)
    report = grader.grade(submission("05", tmp_path, {lambda cell: cell.startswith("def open_app(dsn):"): source}))
    expect(report, {FEW: fails(), LEAKS: fails()})


def test_functions_planted_for_the_graders_superuser_connection_never_run(tiny_data, tmp_path):
    """The solution, plus traps: on its first call open_app plants functions in the clone's public schema (the
    role owns it) that an unqualified call on the grader's admin connection (the probe's log reader, the
    backends query) would pick over the built-ins and run as the superuser; here they only raise."""
    trap = '''def open_app(dsn, _planted=[]):
    """A submission."""
    from psycopg_pool import ConnectionPool

    if not _planted:
        _planted.append(True)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for signature in ("pg_read_binary_file(text, integer, bigint, boolean) RETURNS bytea",
                              "pg_stat_file(text) RETURNS record", "pg_terminate_backend(integer) RETURNS boolean",
                              "pg_current_logfile(text) RETURNS text"):
                conn.execute(f"CREATE OR REPLACE FUNCTION public.{signature} LANGUAGE plpgsql AS "
                             "$$ BEGIN RAISE EXCEPTION 'the trap ran as %', current_user; END $$")

    pool = ConnectionPool(dsn, min_size=1, max_size=POOL_SIZE, kwargs={"autocommit": True}, open=True)

    def handle(customer_id):
        with pool.connection() as conn:
            return conn.execute(ORDER_SUMMARY_SQL, (customer_id,)).fetchone()

    return handle, pool.close
'''
    report = grader.grade(submission("05", tmp_path, {lambda cell: cell.startswith("def open_app(dsn):"): trap}))
    expect(report, {SAME: passes(), FEW: passes("counted by the server"), LEAKS: passes(), SPEED: TIMED})
    assert "trap ran" not in report.text(), report.text()


def test_the_speed_checks_customers_exist_at_every_scale():
    """The speed check draws each timed call's customers from the burst's middle half by order count. A fixed
    range (4-11 orders) once held none of them at `small`, where every burst customer has 20 orders or more,
    and the check crashed there (a grader error); `tiny` has 3-8 in its middle half."""
    from perflab.topics.t05_pooling import checks as lab05

    for counts in ({c: c % 9 for c in lab05.BURST_CUSTOMERS},            # tiny-like: 0-8 orders
                   {c: 20 + c % 300 for c in lab05.BURST_CUSTOMERS}):    # small-like: 20 orders and more
        universe = lab05._typical_customers({c: (n, "any total") for c, n in counts.items()})
        assert len(universe) == len(lab05.BURST_CUSTOMERS) // 2 >= lab05.REQUESTS_PER_TIMED_CALL
        ordered = sorted(counts.values())
        assert sorted(counts[c] for c in universe) == ordered[len(ordered) // 4:len(ordered) - len(ordered) // 4]
