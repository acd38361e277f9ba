"""Lab 06's grader: passes the solution; fails the starter, an unbounded gather, a sequential answer
and answers in the wrong order, each on the contract it breaks (the server's in-flight count first)."""
from pathlib import Path


from labtools import submission

from perflab import paths
from perflab.grading import grader

SOLUTION = paths.SOLUTIONS_DIR / "06_async_gather.ipynb"
STARTER = paths.LABS_DIR / "06_async_gather.ipynb"
ORDER = "every item, in order"
IN_FLIGHT = "at most 10 in flight, and close to 10"
TIME = "within 1.3 × the ideal time for 10 in flight"
FAILURES = "failed items don't lose the others"


def _with_fetch_all(tmp_path: Path, body: str) -> Path:
    return submission(SOLUTION, tmp_path, lambda cell: cell.startswith("async def fetch_all("),
                      'async def fetch_all(session, base_url, ids):\n    """A submission."""\n' + body)


def _outcomes(report) -> dict:
    return {o.name: o for o in report.checks}


def test_solution_passes():
    report = grader.grade(SOLUTION)
    outcomes = _outcomes(report)
    for name in (ORDER, IN_FLIGHT, FAILURES):
        assert outcomes[name].status == "passed", report.text()
    assert outcomes[TIME].status in ("passed", "inconclusive"), report.text()


def test_starter_fails_every_contract(tmp_path):
    report = grader.grade(STARTER, out_dir=tmp_path)
    assert not report.passed and report.exit_code == 1
    outcomes = _outcomes(report)
    assert outcomes[IN_FLIGHT].status == "failed" and "at most 1 request" in outcomes[IN_FLIGHT].message
    assert outcomes[TIME].status == "failed"
    assert outcomes[FAILURES].status == "failed" and "return_exceptions" in outcomes[FAILURES].message


def test_unbounded_gather_fails_the_in_flight_limit(tmp_path):
    unbounded = '''    async def fetch(item_id):
        async with session.get(f"{base_url}/items/{item_id}") as response:
            response.raise_for_status()
            return await response.json()

    results = await asyncio.gather(*(fetch(i) for i in ids), return_exceptions=True)
    return [None if isinstance(r, Exception) else r for r in results]
'''
    outcomes = _outcomes(grader.grade(_with_fetch_all(tmp_path, unbounded)))
    assert outcomes[ORDER].status == "passed"
    failed = outcomes[IN_FLIGHT]
    assert failed.status == "failed" and "the limit is 10" in failed.message
    assert failed.details["max_in_flight"] > 10
    assert outcomes[FAILURES].status == "passed"


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
    outcomes = _outcomes(grader.grade(_with_fetch_all(tmp_path, sequential)))
    assert outcomes[IN_FLIGHT].status == "failed"
    assert outcomes[TIME].status == "failed" and "stopped after" in outcomes[TIME].message


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
    outcomes = _outcomes(grader.grade(_with_fetch_all(tmp_path, completion_order)))
    failed = outcomes[ORDER]
    assert failed.status == "failed" and "not in the order of ids" in failed.message
    assert outcomes[IN_FLIGHT].status == "passed"
