"""Lab 09's own tables: the starter is right but quadratic; a still-quadratic and a wrong answer fail on
the right checks; the counting type the deterministic checks rely on (tests/test_labs.py: the solution
passes, the starter fails).

The variants are judged by the checks the tests read (`labtools.judge`: re-created and run in the grader's
sandboxes, as `grader.grade` does once the notebook has run; the notebook only defines them)."""
import pytest

from labtools import SLOW, expect, fails, judge, passes

from perflab import complexity
from perflab.grading import grader
from perflab.grading import sources
from perflab.topics.t09_structures import checks as lab09
from perflab.topics.t09_structures import drivers

SPEED = "at least 10x faster than the original at the largest size"
COUNTS = "comparisons and hashes grow linearly (slope <= 1.2)"
TIME = "time grows linearly (slope <= 1.2)"
SAME = "same results as the original"

# Builds the set inside the loop: right answer, but a set of m ids per order is as quadratic as the list.
STILL_QUADRATIC_VIP = '''
def vip_orders(orders, vip_ids):
    return [order for order in orders if order[1] in set(vip_ids)]
'''
# Fast but wrong: a set forgets the order in which events first appeared.
WRONG_DEDUPE = '''
def dedupe_events(events):
    return list(set(events))
'''


# The starter reworded (so it counts as an attempt): still right, still quadratic.
REWORDED_STARTERS = {
    "vip_orders": '''
def vip_orders(orders, vip_ids):
    found = [order for order in orders if order[1] in vip_ids]
    return found
''',
    "dedupe_events": '''
def dedupe_events(events):
    seen = []
    for event in events:
        if event not in seen:
            seen.append(event)
    return seen
''',
}


def test_the_starter_reworded_is_right_but_quadratic():
    report = judge("09", [(exercise, check) for exercise in ("vip", "dedupe") for check in (SAME, COUNTS, TIME, SPEED)],
                   **REWORDED_STARTERS)
    for exercise in ("vip", "dedupe"):
        found = expect(report, {(exercise, SAME): passes(), (exercise, COUNTS): fails("still quadratic"),
                                (exercise, TIME): SLOW, (exercise, SPEED): SLOW})
        assert 1.8 < found[(exercise, COUNTS)].details["slope"] < 2.2
    expect(report, {("vip", COUNTS): fails("slope", "n=250..2k")})


def test_still_quadratic_and_wrong_answers_fail_on_the_right_checks():
    checks = [("vip", SAME), ("vip", COUNTS), ("vip", TIME), ("dedupe", SAME), ("dedupe", SPEED)]
    expect(judge("09", checks, vip_orders=STILL_QUADRATIC_VIP, dedupe_events=WRONG_DEDUPE), {
        # Still quadratic: correct, but the counts and the time say so.
        ("vip", SAME): passes(), ("vip", COUNTS): fails("still quadratic"), ("vip", TIME): SLOW,
        # Wrong: fails correctness, and its speed is not judged.
        ("dedupe", SAME): fails("order"), ("dedupe", SPEED): fails("not judged"),
    })


# ------------------------------------------------------------------------------------------------
# The counting type the deterministic checks rely on
# ------------------------------------------------------------------------------------------------

def test_counted_ints_count_comparisons_and_hashes_and_behave_like_ints():
    values = complexity.counted(range(100))
    with complexity.counting() as scan:
        assert complexity.Counted(-1) not in values
    assert scan.operations == 100
    as_set = set(values)
    with complexity.counting() as lookup:
        assert complexity.Counted(50) in as_set
    assert 1 <= lookup.operations <= 3
    assert values[3] + 1 == 4 and repr(values[3]) == "3" and sorted(values[::-1]) == values


@pytest.mark.parametrize("name", ["vip_orders", "dedupe_events"])
def test_originals_are_quadratic_and_references_linear_by_count(name):
    """The solution notebook's reference and its starter, counted on the inputs the sandbox builds."""
    spec = grader.load_lab("09")
    functions = {}
    for side, answers in (("original", sources.originals(spec)), ("reference", sources.references(spec))):
        scope: dict = {}
        exec(answers[name].source, scope)  # course code from solutions/, in the test's own process
        functions[side] = scope[name]
    growth = complexity.count_sweep(functions, sizes=lab09.COUNT_SIZES,
                                    setup=lambda n: drivers.INPUTS[name](n, complexity.Counted))
    assert growth.slopes["original"] == pytest.approx(2.0, abs=0.1)
    assert growth.slopes["reference"] == pytest.approx(1.0, abs=0.1)
