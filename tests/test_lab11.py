"""Lab 11's own tables: the starter fails on stale reads; a router that sends every read to the primary fails
on replica share, and one that answers from memory is caught by the servers' counts, each with the message
that names the problem (tests/test_labs.py: the solution passes, the starter fails).

Stale reads are counted by the grader and the replica share by the servers' own statistics; the latency
check may say "inconclusive" on a noisy machine, which is not a pass and not a failure.
"""
from labtools import TIMED, expect, fails, graded, passes, submission

from perflab.grading import grader

EX = "router"
ROWS = (EX, "reads return the selected rows")
STALE = (EX, "no stale reads of a session's own writes")
SHARE = (EX, "at least 50% of reads served by the replica")
LATENCY = (EX, "latency at most 2x the reference router's")


def _grade(tmp_path, source: str):
    return grader.grade(submission("11", tmp_path, {lambda cell: cell.startswith("def open_router("): source}))


def test_the_solution_passes_on_counted_checks(tiny_data):
    expect(graded("11", "solution"), {ROWS: passes(), STALE: passes(), SHARE: passes(), LATENCY: TIMED})


def test_the_starter_fails_on_stale_reads_counted_by_the_grader(tiny_data):
    # Naive routing does use the replica: it is the staleness that fails.
    expect(graded("11", "starter"), {ROWS: passes(), STALE: fails("older than the session's own last write"),
                                     SHARE: passes()})


def test_everything_to_the_primary_fails_on_replica_share(tiny_data, tmp_path):
    primary_only = '''def open_router(primary_dsn, replica_dsn):
    """Always fresh, never uses the replica."""
    from psycopg_pool import ConnectionPool

    primary = ConnectionPool(primary_dsn, min_size=1, max_size=8, kwargs={"autocommit": True}, open=True)

    def route(session, sql, params=(), write=False):
        with primary.connection() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else None

    return route, primary.close
'''
    report = _grade(tmp_path, primary_only)
    expect(report, {STALE: passes(), SHARE: fails("served by the replica (0 of", "replica does no work")})
    assert not report.passed


def test_a_router_that_caches_reads_is_caught_by_the_servers_counts(tiny_data, tmp_path):
    cached = '''def open_router(primary_dsn, replica_dsn):
    """Answers repeated reads from memory: no stale reads, and it claims nothing, but the servers never see them."""
    from psycopg_pool import ConnectionPool

    primary = ConnectionPool(primary_dsn, min_size=1, max_size=8, kwargs={"autocommit": True}, open=True)
    cache = {}

    def route(session, sql, params=(), write=False):
        if write:
            with primary.connection() as conn:
                conn.execute(sql, params)
            cache[params[1]] = [(params[0],)]
            return None
        if params[0] in cache:
            return cache[params[0]]
        with primary.connection() as conn:
            return conn.execute(sql, params).fetchall()

    return route, primary.close
'''
    expect(_grade(tmp_path, cached), {SHARE: fails("without asking a database")})
