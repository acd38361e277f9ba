"""Lab 07's own tables: the untouched starter scores 0, and faulty caches (a cache without stampede
protection, a stale cache, a cache kept in the process, a lock kept in the process) each fail on the
check that names its fault (tests/test_labs.py: the solution passes, the starter fails).

The faulty caches are the solution with one answer replaced, judged by the counted checks directly
(what the grader does after executing a notebook: sandboxes, roles and Redis of their own), seconds
each, not a notebook run.
"""
import contextlib
import textwrap
from pathlib import Path

from labtools import TIMED, expect, fails, graded, passes, solution_answers

from perflab.grading import grader
from perflab.grading.grader import GradingContext, RecordedFunction

STAMPEDE = ("stampede", "at most 2 database queries for 100 concurrent misses")
RACE = ("invalidation", "no stale value after a racing reader")
READ_YOUR_WRITES = ("invalidation", "read-your-writes after rename_customer()")
CORRECT = ("cache", "correct values, and a hit runs no query")
FAST = ("cache", "a hit is much faster than the query")
COUNTED = [CORRECT, READ_YOUR_WRITES, RACE, STAMPEDE]  # the timed check is left out of the variants

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
# The starter, touched but still without a cache: nothing is stale because nothing is cached.
NO_CACHE = '''
def get_dashboard(r, db, customer_id):
    value = db.dashboard(customer_id)
    return value
'''
# Fast and never a query on a hit, but the cache lives in the process: not shared, never invalidated by others.
IN_PROCESS_CACHE = '''
def get_dashboard(r, db, customer_id, _cache={}):
    if customer_id not in _cache:
        _cache[customer_id] = db.dashboard(customer_id)
    return _cache[customer_id]
'''
# Cache-aside in Redis, with the herd held back by a lock that only this process's threads share.
IN_PROCESS_LOCK = '''
def get_dashboard(r, db, customer_id, _lock=threading.Lock()):
    key = db.key("dashboard", customer_id)
    cached = r.get(key)
    if cached is not None:
        return json.loads(cached)
    with _lock:
        cached = r.get(key)
        if cached is not None:
            return json.loads(cached)
        value = db.dashboard(customer_id)
        r.set(key, json.dumps(value), ex=300)
        return value
'''
# A plain cache that, when it is loaded, rigs the course's stampede helper to make its calls one at a time.
RIGGED_HERD = '''
def get_dashboard(r, db, customer_id, _rig=__import__("perflab.topics.t07_caching.rig", fromlist=["x"]).__dict__.update(
        stampede=lambda call, n=100, timeout=60.0: __import__("perflab.topics.t07_caching.rig", fromlist=["x"]).StampedeResult(
            n=n, latencies=[0.001] * n, results=[call() for _ in range(n)]))):
    key = db.key("dashboard", customer_id)
    cached = r.get(key)
    if cached is not None:
        return json.loads(cached)
    value = db.dashboard(customer_id)
    r.set(key, json.dumps(value), ex=300)
    return value
'''

# A plain cache that goes round the grader's parking: its reader queries through a ShopDB of its own.
RIGGED_RACE = '''
def get_dashboard(r, db, customer_id):
    key = db.key("dashboard", customer_id)
    cached = r.get(key)
    if cached is not None:
        return json.loads(cached)
    rig = __import__("perflab.topics.t07_caching.rig", fromlist=["ShopDB"])
    with rig.ShopDB(db.dsn, prefix=db.prefix, pool_size=1) as plain:
        value = plain.dashboard(customer_id)
    r.set(key, json.dumps(value), ex=300)
    return value
'''

# The solution, plus a trap for the grader's superuser connection: on its first call it plants a function in
# the clone's public schema (the role owns it) that an unqualified pg_read_binary_file(text, int4, ...) on an
# admin connection would pick over the built-in, and run as the superuser (here it only raises).
PLANTS_A_TRAP = solution_answers("07")["get_dashboard"].source.replace(
    "def get_dashboard(r, db, customer_id):", '''def get_dashboard(r, db, customer_id, _planted=[]):
    if not _planted:
        _planted.append(True)
        with db.transaction() as conn:
            conn.execute("CREATE FUNCTION public.pg_read_binary_file(text, integer, bigint, boolean) RETURNS bytea "
                         "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'the trap ran as %', current_user; END $$")''', 1)


def judge(checks: list, **replaced) -> dict:
    """Run only ``checks`` (keys ``(exercise, name)``) on the solution's answers with ``replaced`` swapped
    in, in sandboxes of their own (what `grader.grade` does once the notebook has run)."""
    spec = grader.load_lab("07")
    answers = solution_answers("07")
    for name, value in replaced.items():
        answers[name] = RecordedFunction(name, textwrap.dedent(value).strip() + "\n")
    with contextlib.ExitStack() as resources:
        ctx = GradingContext(lab=spec, submission=Path("07_variant.ipynb"), answers=answers, answer_errors={},
                             _resources=resources)
        return {(exercise.name, check.name): grader._run_check(exercise, check, ctx)
                for exercise in spec.exercises for check in exercise.checks if (exercise.name, check.name) in checks}


def test_the_solution_passes_every_counted_check(tiny_data):
    # Counters are deterministic: they must pass on any machine; the timed check may say "rerun".
    expect(graded("07", "solution"), {**{key: passes() for key in COUNTED}, FAST: TIMED})


def test_the_untouched_starter_scores_zero(tiny_data):
    report = graded("07", "starter")
    expect(report, {key: fails("still the starter code") for key in COUNTED + [FAST]})
    assert report.score == 0, report.text()


def test_cache_without_stampede_protection_fails_the_stampede_and_the_race(tiny_data):
    judged = judge(COUNTED, get_dashboard=PLAIN_CACHE_ASIDE, rename_customer=DELETE_ON_WRITE)
    expect(judged, {CORRECT: passes(), READ_YOUR_WRITES: passes(), STAMPEDE: fails("thundering herd"),
                    RACE: fails("lease")})


def test_stale_cache_fails_read_your_writes(tiny_data):
    expect(judge(COUNTED, rename_customer=NO_INVALIDATION),
           {READ_YOUR_WRITES: fails("stale cache"), RACE: fails(), STAMPEDE: passes()})


def test_a_cache_in_the_process_is_not_a_redis_cache(tiny_data):
    expect(judge([CORRECT], get_dashboard=IN_PROCESS_CACHE), {CORRECT: fails("Redis")})


def test_a_lock_in_one_process_does_not_stop_a_herd_of_processes(tiny_data):
    expect(judge([STAMPEDE], get_dashboard=IN_PROCESS_LOCK), {STAMPEDE: fails("thundering herd")})


def test_rigging_the_herd_inside_the_sandbox_gains_nothing(tiny_data):
    expect(judge([STAMPEDE], get_dashboard=RIGGED_HERD), {STAMPEDE: fails("thundering herd")})


def test_without_a_cache_the_invalidation_checks_do_not_pass(tiny_data):
    # The grader's rule: a check never passes because what it checks did not happen.
    expect(judge(COUNTED, get_dashboard=NO_CACHE),
           {CORRECT: fails("not cached"), READ_YOUR_WRITES: fails("nothing is cached"),
            RACE: fails("nothing is cached"), STAMPEDE: fails("thundering herd")})


def test_rigging_the_race_inside_the_sandbox_gains_nothing(tiny_data):
    expect(judge([RACE], get_dashboard=RIGGED_RACE, rename_customer=DELETE_ON_WRITE),
           {RACE: fails("could not be forced")})


def test_a_function_planted_for_the_graders_superuser_connection_never_runs(tiny_data):
    # Were the trap called by the grader's log reader, the check would crash ("error"), not pass.
    expect(judge([CORRECT], get_dashboard=PLANTS_A_TRAP), {CORRECT: passes()})
