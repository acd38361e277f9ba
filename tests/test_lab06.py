"""Lab 06's own tables: the starter's reasons, an unbounded gather, a sequential answer and answers in the
wrong order, each failing on the contract it breaks, the server's in-flight count first
(tests/test_labs.py: the solution passes, the starter fails)."""
from labtools import TIMED, expect, fails, graded, passes, submission

from perflab.grading import grader

ORDER = "every item, in order"
IN_FLIGHT = "at most 10 in flight, and close to 10"
TIME = "within 1.3 × the ideal time for 10 in flight"
FAILURES = "failed items don't lose the others"


def _grade(tmp_path, body: str):
    source = 'async def fetch_all(session, base_url, ids):\n    """A submission."""\n' + body
    return grader.grade(submission("06", tmp_path, {lambda cell: cell.startswith("async def fetch_all("): source}))


def test_the_solution_passes_on_counted_checks():
    expect(graded("06", "solution"), {ORDER: passes(), IN_FLIGHT: passes(), FAILURES: passes(), TIME: TIMED})


def test_the_starter_fails_every_contract():
    expect(graded("06", "starter"), {IN_FLIGHT: fails("at most 1 request"), TIME: fails(),
                                     FAILURES: fails("return_exceptions")})


def test_unbounded_gather_fails_the_in_flight_limit(tmp_path):
    unbounded = '''    async def fetch(item_id):
        async with session.get(f"{base_url}/items/{item_id}") as response:
            response.raise_for_status()
            return await response.json()

    results = await asyncio.gather(*(fetch(i) for i in ids), return_exceptions=True)
    return [None if isinstance(r, Exception) else r for r in results]
'''
    found = expect(_grade(tmp_path, unbounded), {ORDER: passes(), IN_FLIGHT: fails("the limit is 10"),
                                                 FAILURES: passes()})
    assert found[IN_FLIGHT].details["max_in_flight"] > 10


def test_sequential_answer_is_too_slow(tmp_path):
    sequential = '''    results = []
    for item_id in ids:
        try:
            async with session.get(f"{base_url}/items/{item_id}") as response:
                response.raise_for_status()
                results.append(await response.json())
        except Exception:
            results.append(None)
    return results
'''
    expect(_grade(tmp_path, sequential), {IN_FLIGHT: fails(), TIME: fails("stopped after")})


def test_results_in_completion_order_are_wrong(tmp_path):
    completion_order = '''    slots = asyncio.Semaphore(LIMIT)

    async def fetch(item_id):
        async with slots:
            async with session.get(f"{base_url}/items/{item_id}") as response:
                response.raise_for_status()
                return await response.json()

    results = []
    for done in asyncio.as_completed([fetch(i) for i in ids]):
        try:
            results.append(await done)
        except Exception:
            results.append(None)
    return results
'''
    expect(_grade(tmp_path, completion_order), {ORDER: fails("not in the order of ids"), IN_FLIGHT: passes()})
