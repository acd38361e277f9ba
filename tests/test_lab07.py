"""Lab 07's own tables: the starter's reasons, a cache without stampede protection and a stale cache, each
failing on the check that names its fault (tests/test_labs.py: the solution passes, the starter fails).

The faulty caches are the solution with one answer replaced, judged by the counted checks directly
(what the grader does after executing a notebook): seconds each, not a notebook run.
"""
from labtools import SLOW, TIMED, expect, fails, graded, judge, passes

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


def test_the_solution_passes_every_counted_check(tiny_data):
    # Counters are deterministic: they must pass on any machine; the timed check may say "rerun".
    expect(graded("07", "solution"), {**{key: passes() for key in COUNTED}, FAST: TIMED})


def test_the_starter_fails_with_the_reasons(tiny_data):
    # No cache yet, so nothing is stale: the invalidation checks pass (labtools.STARTER_COMPLETES).
    expect(graded("07", "starter"), {CORRECT: fails("not cached"), STAMPEDE: fails("100 identical"), FAST: SLOW,
                                     READ_YOUR_WRITES: passes(), RACE: passes()})


def test_cache_without_stampede_protection_fails_the_stampede_and_the_race(scratch_db):
    judged = judge("07", scratch_db, COUNTED, get_dashboard=PLAIN_CACHE_ASIDE, rename_customer=DELETE_ON_WRITE)
    expect(judged, {CORRECT: passes(), READ_YOUR_WRITES: passes(), STAMPEDE: fails("thundering herd"),
                    RACE: fails("lease")})


def test_stale_cache_fails_read_your_writes(scratch_db):
    expect(judge("07", scratch_db, COUNTED, rename_customer=NO_INVALIDATION),
           {READ_YOUR_WRITES: fails("stale cache"), RACE: fails(), STAMPEDE: passes()})
