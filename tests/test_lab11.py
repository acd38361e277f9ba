"""Lab 11's grader: passes the solution; fails the starter (stale reads) and a router that sends every read
to the primary (replica share), each with the message that names the problem.

Stale reads are counted by the grader and the replica share by the servers' own statistics; the latency
check may say "inconclusive" on a noisy machine, which is not a pass and not a failure.
"""
from labtools import outcomes, submission

from perflab import paths
from perflab.grading import grader

SOLUTION = paths.SOLUTIONS_DIR / "11_scaling_out.ipynb"
STARTER = paths.LABS_DIR / "11_scaling_out.ipynb"
EX = "router"
ROWS = (EX, "reads return the selected rows")
STALE = (EX, "no stale reads of a session's own writes")
SHARE = (EX, "at least 50% of reads served by the replica")
LATENCY = (EX, "latency at most 2x the reference router's")


def test_solution_passes(tiny_data, tmp_path):
    report = grader.grade(SOLUTION, out_dir=tmp_path)
    got = outcomes(report)
    for name in (ROWS, STALE, SHARE):
        assert got[name].status == "passed", report.text()
    assert got[LATENCY].status in ("passed", "inconclusive"), report.text()
    assert report.exit_code in (0, 3)


def test_starter_fails_on_stale_reads_counted_by_the_grader(tiny_data, tmp_path):
    report = grader.grade(STARTER, out_dir=tmp_path)
    got = outcomes(report)
    assert not report.passed and report.exit_code == 1
    assert got[ROWS].status == "passed"
    assert got[STALE].status == "failed", report.text()
    assert "older than the session's own last write" in got[STALE].message
    assert got[SHARE].status == "passed"  # naive routing does use the replica: it is the staleness that fails
    assert (tmp_path / "results.json").exists()


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
    path = submission(SOLUTION, tmp_path, lambda cell: cell.startswith("def open_router("), primary_only)
    report = grader.grade(path, out_dir=tmp_path)
    got = outcomes(report)
    assert got[STALE].status == "passed", report.text()
    assert got[SHARE].status == "failed", report.text()
    assert "served by the replica (0 of" in got[SHARE].message and "replica does no work" in got[SHARE].message
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
    path = submission(SOLUTION, tmp_path, lambda cell: cell.startswith("def open_router("), cached)
    got = outcomes(grader.grade(path, out_dir=tmp_path))
    assert got[SHARE].status == "failed"
    assert "without asking a database" in got[SHARE].message
