"""Lab 09's grader: passes the solution, fails the starter, a still-quadratic answer and a wrong one."""
from pathlib import Path

import nbformat
import pytest

from labtools import outcomes as checks_by_name

from perflab import complexity, paths
from perflab.grading import grader
from perflab.topics.t09_structures import checks as lab09

SOLUTION = paths.SOLUTIONS_DIR / "09_data_structures.ipynb"
STARTER = paths.LABS_DIR / "09_data_structures.ipynb"

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


def _with_answers(tmp_path: Path, replacements: dict[str, str]) -> Path:
    """The solution notebook with some answer cells replaced."""
    notebook = nbformat.read(SOLUTION, as_version=4)
    for name, source in replacements.items():
        for cell in notebook.cells:
            if cell.cell_type == "code" and f"def {name}(" in cell.source and "BEGIN SOLUTION" in cell.source:
                # Keep the cell's original_* function (the self-check uses it); replace the answer.
                cell.source = cell.source.split("# BEGIN STARTER")[0] + source
                break
        else:
            raise AssertionError(f"no answer cell for {name}")
    target = tmp_path / "09_submission.ipynb"
    nbformat.write(notebook, target)
    return target




def test_solution_passes_every_check():
    report = grader.grade(SOLUTION)
    if report.status == "inconclusive":
        # The grader's own verdict "too noisy to judge, rerun" (a busy CI machine): rerun once, as a learner would.
        report = grader.grade(SOLUTION)
    assert report.passed, report.text()


def test_starter_is_right_but_quadratic(tmp_path):
    report = grader.grade(STARTER, out_dir=tmp_path)
    assert not report.passed and report.exit_code == 1, report.text()
    outcomes = checks_by_name(report)
    for exercise in ("vip", "dedupe"):
        assert outcomes[(exercise, SAME)].status == "passed"
        counted = outcomes[(exercise, COUNTS)]
        assert counted.status == "failed" and "still quadratic" in counted.message, counted.message
        assert 1.8 < counted.details["slope"] < 2.2
        assert outcomes[(exercise, TIME)].status in ("failed", "inconclusive")
        assert outcomes[(exercise, SPEED)].status in ("failed", "inconclusive")
    assert "slope" in outcomes[("vip", COUNTS)].message and "n=250..2k" in outcomes[("vip", COUNTS)].message


def test_still_quadratic_and_wrong_answers_fail_on_the_right_checks(tmp_path):
    report = grader.grade(_with_answers(tmp_path, {"vip_orders": STILL_QUADRATIC_VIP, "dedupe_events": WRONG_DEDUPE}))
    outcomes = checks_by_name(report)
    # Still quadratic: correct, but the counts and the time say so.
    assert outcomes[("vip", SAME)].status == "passed"
    assert outcomes[("vip", COUNTS)].status == "failed"
    assert "still quadratic" in outcomes[("vip", COUNTS)].message
    assert outcomes[("vip", TIME)].status in ("failed", "inconclusive")
    # Wrong: fails correctness, and its speed is not judged.
    wrong = outcomes[("dedupe", SAME)]
    assert wrong.status == "failed" and "order" in wrong.message, wrong.message
    assert outcomes[("dedupe", SPEED)].status == "failed"
    assert "not judged" in outcomes[("dedupe", SPEED)].message


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
    spec = lab09.EXERCISES[name]
    growth = complexity.count_sweep({"original": spec["original"], "reference": spec["reference"]},
                                    sizes=lab09.COUNT_SIZES, setup=lambda n: spec["inputs"](n, wrap=complexity.Counted))
    assert growth.slopes["original"] == pytest.approx(2.0, abs=0.1)
    assert growth.slopes["reference"] == pytest.approx(1.0, abs=0.1)
