"""Lab 07's grader: fails the starter, passes the solution, fails a cache without stampede protection
and a stale cache — each on the check that names its fault.

The solution and the starter go through the whole grading run (a fresh kernel executes the notebook).
The faulty caches are the solution with one answer replaced, judged by the same checks directly
(what the grader does after executing a notebook), which keeps this file well under a minute and a half.
"""
import ast
import textwrap
from pathlib import Path

import nbformat

from labtools import outcomes as checks_by_name

from perflab import paths
from perflab.grading import grader
from perflab.grading.grader import GradingContext, RecordedFunction
from perflab.topics.t07_caching import checks as lab07

SOLUTION = paths.SOLUTIONS_DIR / "07_redis_caching.ipynb"
STARTER = paths.LABS_DIR / "07_redis_caching.ipynb"

PLAIN_CACHE_ASIDE = '''
def get_dashboard(r, db, customer_id):
    key = db.key("dashboard", customer_id)
    cached = r.get(key)
    if cached is not None:
        return json.loads(cached)
    value = db.dashboard(customer_id)
    r.set(key, json.dumps(value), ex=300)
    return value
'''
DELETE_ON_WRITE = '''
def rename_customer(r, db, customer_id, name):
    db.rename(customer_id, name)
    r.delete(db.key("dashboard", customer_id))
'''
NO_INVALIDATION = '''
def rename_customer(r, db, customer_id, name):
    db.rename(customer_id, name)  # the cached dashboard lives on until its TTL
'''


def _solution_functions() -> dict[str, str]:
    """The solution's answer functions, as source text (what the grader records from the kernel)."""
    notebook = nbformat.read(SOLUTION, as_version=4)
    cell = next(c for c in notebook.cells if c.cell_type == "code" and "def get_dashboard" in c.source
                and "BEGIN SOLUTION" in c.source)
    tree = ast.parse(cell.source)
    return {node.name: textwrap.dedent(ast.get_source_segment(cell.source, node))
            for node in tree.body if isinstance(node, ast.FunctionDef)}


def _judge(dsn: str, **sources: str) -> dict:
    answers = _solution_functions()
    answers.update({name: textwrap.dedent(source).strip() + "\n" for name, source in sources.items()})
    ctx = GradingContext(lab=lab07.LAB, submission=Path("07_variant.ipynb"),
                         answers={name: RecordedFunction(name, source) for name, source in answers.items()},
                         answer_errors={}, dsn=dsn)
    # The timed check is left out: these answers differ from the solution only in their counters.
    return {(exercise.name, check.name): grader._run_check(exercise, check, ctx)
            for exercise in lab07.LAB.exercises for check in exercise.checks
            if (exercise.name, check.name) != FAST}




STAMPEDE = ("stampede", "at most 2 database queries for 100 concurrent misses")
RACE = ("invalidation", "no stale value after a racing reader")
READ_YOUR_WRITES = ("invalidation", "read-your-writes after rename_customer()")
CORRECT = ("cache", "correct values, and a hit runs no query")
FAST = ("cache", "a hit is much faster than the query")


def test_solution_passes_every_check(tiny_data):
    report = grader.grade(SOLUTION)
    outcomes = checks_by_name(report)
    # Counters are deterministic: they must pass on any machine.
    for key in (CORRECT, READ_YOUR_WRITES, RACE, STAMPEDE):
        assert outcomes[key].status == "passed", report.text()
    # The one timed check may say "rerun" on a machine too busy to judge, never "failed".
    assert outcomes[FAST].status in ("passed", "inconclusive"), report.text()
    assert report.passed or report.status == "inconclusive", report.text()


def test_starter_fails_with_the_reasons(tiny_data, tmp_path):
    report = grader.grade(STARTER, out_dir=tmp_path)
    assert not report.passed and report.exit_code in (1, 3)
    outcomes = checks_by_name(report)
    assert outcomes[CORRECT].status == "failed" and "not cached" in outcomes[CORRECT].message
    assert outcomes[STAMPEDE].status == "failed" and "100 identical" in outcomes[STAMPEDE].message
    assert outcomes[FAST].status in ("failed", "inconclusive")
    assert (tmp_path / "results.json").exists()


def test_cache_without_stampede_protection_fails_the_stampede_and_the_race(scratch_db):
    outcomes = _judge(scratch_db, get_dashboard=PLAIN_CACHE_ASIDE, rename_customer=DELETE_ON_WRITE)
    assert outcomes[CORRECT].status == "passed", outcomes[CORRECT].message
    assert outcomes[READ_YOUR_WRITES].status == "passed", outcomes[READ_YOUR_WRITES].message
    stampede = outcomes[STAMPEDE]
    assert stampede.status == "failed" and "thundering herd" in stampede.message, stampede.message
    race = outcomes[RACE]
    assert race.status == "failed" and "lease" in race.message, race.message


def test_stale_cache_fails_read_your_writes(scratch_db):
    outcomes = _judge(scratch_db, rename_customer=NO_INVALIDATION)
    stale = outcomes[READ_YOUR_WRITES]
    assert stale.status == "failed" and "stale cache" in stale.message, stale.message
    assert outcomes[RACE].status == "failed"
    assert outcomes[STAMPEDE].status == "passed", outcomes[STAMPEDE].message
