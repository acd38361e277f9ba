"""Lab 11's own tables: the untouched starter scores 0; the starter's routing (edited, so that it is graded)
fails on stale reads; a router that sends every read to the primary fails on replica share; one that
answers from memory is caught by the servers' counts and by a change made behind its back; one that pads
the replica's count by running each read on both servers is caught too — each with the message that names
the problem (tests/test_labs.py: the solution passes, the starter fails).

Every router runs in a sandbox; stale reads are counted by the grader from the rows that come back, the
replica share by the servers' own statistics; the latency check may say "inconclusive" on a noisy machine,
which is not a pass and not a failure. The variants are judged by the checks they are about, called
directly on a grading context (the grader's own sandboxes, no notebook run).
"""
import contextlib
import textwrap
from pathlib import Path

from labtools import TIMED, Expected, expect, fails, graded, passes, solution_answers

from perflab.grading import grader
from perflab.grading.grader import GradingContext, RecordedFunction

EX = "router"
ROWS = (EX, "reads return the selected rows")
STALE = (EX, "no stale reads of a session's own writes")
SHARE = (EX, "at least 50% of reads served by the replica")
LATENCY = (EX, "latency at most 2x the reference router's")


def judge(open_router: str, checks: list) -> dict:
    """Only ``checks`` on a submission whose ``open_router`` is ``open_router`` (source text), in the
    grader's sandboxes, as grade() runs them after the notebook."""
    spec = grader.load_lab("11")
    answers = solution_answers("11")
    answers["open_router"] = RecordedFunction("open_router", textwrap.dedent(open_router).strip() + "\n")
    with contextlib.ExitStack() as resources:
        ctx = GradingContext(lab=spec, submission=Path("11_variant.ipynb"), answers=answers, answer_errors={},
                             _resources=resources)
        return {(exercise.name, check.name): grader._run_check(exercise, check, ctx)
                for exercise in spec.exercises for check in exercise.checks if (exercise.name, check.name) in checks}


def test_the_solution_passes_on_counted_checks(tiny_data):
    expect(graded("11", "solution"), {ROWS: passes(), STALE: passes(), SHARE: passes(), LATENCY: TIMED})


def test_the_untouched_starter_scores_zero(tiny_data):
    report = graded("11", "starter")
    expect(report, {ROWS: fails("still the starter code"), STALE: fails(), SHARE: fails(), LATENCY: fails()})
    assert report.score == 0


NAIVE = '''
def open_router(primary_dsn, replica_dsn):
    """The starter's routing, written again: writes to the primary, every read to the replica."""
    from psycopg_pool import ConnectionPool

    pools = {name: ConnectionPool(dsn, min_size=1, max_size=8, kwargs={"autocommit": True}, open=True)
             for name, dsn in (("primary", primary_dsn), ("replica", replica_dsn))}

    def route(session, sql, params=(), write=False):
        with pools["primary" if write else "replica"].connection() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def close():
        for pool in pools.values():
            pool.close()

    return route, close
'''


def test_the_starters_routing_fails_on_stale_reads_counted_by_the_grader(tiny_data):
    # Naive routing does use the replica: it is the staleness that fails.
    expect(judge(NAIVE, [ROWS, STALE, SHARE]), {
        ROWS: passes(), STALE: fails("older than the session's own last write"), SHARE: passes()})


def test_everything_to_the_primary_fails_on_replica_share(tiny_data):
    primary_only = '''
def open_router(primary_dsn, replica_dsn):
    """Always fresh, never uses the replica."""
    from psycopg_pool import ConnectionPool

    primary = ConnectionPool(primary_dsn, min_size=1, max_size=8, kwargs={"autocommit": True}, open=True)

    def route(session, sql, params=(), write=False):
        with primary.connection() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else None

    return route, primary.close
'''
    # failed, or inconclusive when the replica lagged so far that the reference router missed 50% too
    # (other test processes' clones keep it busy): never passed
    never_passed = Expected(frozenset({"failed", "inconclusive"}), ("replica",))
    expect(judge(primary_only, [STALE, SHARE]), {STALE: passes(), SHARE: never_passed})


def test_a_router_that_caches_reads_is_caught_by_the_servers_counts(tiny_data):
    cached = '''
def open_router(primary_dsn, replica_dsn):
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
    expect(judge(cached, [ROWS, STALE, SHARE]), {ROWS: fails("another client"), STALE: fails("without asking a database"),
                                                 SHARE: fails("without asking a database")})


def test_a_router_that_pads_the_replicas_count_is_caught(tiny_data):
    padded = '''
def open_router(primary_dsn, replica_dsn):
    """Reads from the primary (always fresh) and runs each read on the replica too, to look busy there."""
    from psycopg_pool import ConnectionPool

    primary = ConnectionPool(primary_dsn, min_size=1, max_size=8, kwargs={"autocommit": True}, open=True)
    replica = ConnectionPool(replica_dsn, min_size=1, max_size=8, kwargs={"autocommit": True}, open=True)

    def route(session, sql, params=(), write=False):
        if not write:
            with replica.connection() as conn:
                conn.execute(sql, params).fetchall()
        with primary.connection() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def close():
        primary.close()
        replica.close()

    return route, close
'''
    expect(judge(padded, [STALE, SHARE]), {STALE: passes(), SHARE: fails("not on both")})
