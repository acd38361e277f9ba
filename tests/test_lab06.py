"""Lab 06's own tables: the starter's reasons, an unbounded gather, a sequential answer, answers in the
wrong order and a few cheats, each failing on the contract it breaks, the server's in-flight count first
(tests/test_labs.py: the solution passes, the starter fails). The service is the grader's: its counters
are read over a pipe only the grader holds, and its items carry a secret salt.

A plain variant is judged by the checks the test reads (`labtools.judge`: fetch_all re-created and run in the
grader's sandboxes, as `grader.grade` does once the notebook has run); the cheats, which also act while the
notebook runs (control endpoints poked, the service's process hunted), are graded whole."""
from labtools import TIMED, expect, fails, graded, judge, passes, submission

from perflab.grading import grader

ORDER = "every item, in order"
IN_FLIGHT = "at most 10 in flight, and close to 10"
TIME = "within 1.3 × the ideal time for 10 in flight"
FAILURES = "failed items don't lose the others"


def _judge(body: str, checks=(ORDER, IN_FLIGHT, TIME, FAILURES)):
    source = 'async def fetch_all(session, base_url, ids):\n    """A submission."""\n' + body
    return judge("06", list(checks), fetch_all=source)


def _grade(tmp_path, body: str):
    source = 'async def fetch_all(session, base_url, ids):\n    """A submission."""\n' + body
    return grader.grade(submission("06", tmp_path, {lambda cell: cell.startswith("async def fetch_all("): source}))


def test_the_solution_passes_on_counted_checks():
    expect(graded("06", "solution"), {ORDER: passes(), IN_FLIGHT: passes(), FAILURES: passes(), TIME: TIMED})


def test_the_untouched_starter_scores_zero():
    report = graded("06", "starter")
    assert report.score == 0, report.text()
    expect(report, {ORDER: fails("not attempted"), IN_FLIGHT: fails("not attempted"), TIME: fails("not attempted"),
                    FAILURES: fails("not attempted")})


def test_the_starters_code_touched_fails_every_contract():
    touched = '''    items = []                                       # the starter's code, touched
    for item_id in ids:
        async with session.get(f"{base_url}/items/{item_id}") as response:
            response.raise_for_status()
            items.append(await response.json())
    return items
'''
    expect(_judge(touched, (IN_FLIGHT, TIME, FAILURES)), {IN_FLIGHT: fails("at most 1 request"), TIME: fails(),
                                       FAILURES: fails("return_exceptions")})


def test_unbounded_gather_fails_the_in_flight_limit():
    unbounded = '''    async def fetch(item_id):
        async with session.get(f"{base_url}/items/{item_id}") as response:
            response.raise_for_status()
            return await response.json()

    results = await asyncio.gather(*(fetch(i) for i in ids), return_exceptions=True)
    return [None if isinstance(r, Exception) else r for r in results]
'''
    found = expect(_judge(unbounded, (ORDER, IN_FLIGHT, FAILURES)), {ORDER: passes(), IN_FLIGHT: fails("the limit is 10"),
                                                 FAILURES: passes()})
    assert found[IN_FLIGHT].details["max_in_flight"] > 10


def test_sequential_answer_is_too_slow():
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
    expect(_judge(sequential, (IN_FLIGHT, TIME)), {IN_FLIGHT: fails(), TIME: fails("stopped after")})


def test_results_in_completion_order_are_wrong():
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
    expect(_judge(completion_order, (ORDER, IN_FLIGHT)), {ORDER: fails("not in the order of ids"), IN_FLIGHT: passes()})


def test_answers_computed_without_the_service_and_its_controls_are_out_of_reach(tmp_path):
    """The items' public formula instead of requests, the old HTTP control endpoints tried (a reset to
    hide the burst, /config to remove the latency): nothing is fetched, nothing is controlled."""
    cheat = '''    async def poke(method, path, **body):
        try:
            async with session.request(method, f"{base_url}{path}", json=body or None) as response:
                return response.status
        except Exception:
            return None

    statuses = [await poke("POST", "/config", latency_ms=0), await poke("POST", "/reset"),
                await poke("GET", "/stats")]
    assert all(status in (404, 405, None) for status in statuses), statuses
    return [{"id": i, "value": (i * 7919) % 10_007} for i in ids]
'''
    expect(_grade(tmp_path, cheat), {ORDER: fails("results are wrong"), IN_FLIGHT: fails(), TIME: fails(),
                                     FAILURES: fails()})


def test_a_burst_hidden_by_killing_the_service_is_caught(tmp_path):
    """An unbounded gather that then tries to kill the process listening on base_url's port (the grader's,
    not the sandbox user's): the service survives and its count stands."""
    cheat = '''    import os, signal, subprocess

    async def fetch(item_id):
        async with session.get(f"{base_url}/items/{item_id}") as response:
            response.raise_for_status()
            return await response.json()

    results = await asyncio.gather(*(fetch(i) for i in ids), return_exceptions=True)
    port = base_url.rsplit(":", 1)[1]
    try:
        out = subprocess.run(["fuser", f"{port}/tcp"], capture_output=True, text=True).stdout
        for pid in out.split():
            os.kill(int(pid), signal.SIGKILL)
    except Exception:
        pass
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                os.kill(int(pid), signal.SIGKILL) if "slowservice" in open(f"/proc/{pid}/cmdline").read() else None
            except Exception:
                pass
    return [None if isinstance(r, Exception) else r for r in results]
'''
    found = expect(_grade(tmp_path, cheat), {ORDER: passes(), IN_FLIGHT: fails("the limit is 10")})
    assert found[IN_FLIGHT].details["max_in_flight"] > 10
