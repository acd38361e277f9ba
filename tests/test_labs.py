"""Every lab, found from ``solutions/NN_*.ipynb``: its solution passes, its starter fails every exercise
(an untouched starter scores 0: it is not an attempt).

Each is graded once per run (``labtools.graded``): the lab's own test file (``tests/test_labNN.py``)
reads the same reports for the diagnoses it expects, then grades its slow-but-right and fast-but-wrong
answers.
"""
import json

import pytest

from labtools import LABS, graded, solution
from perflab import notebooks
from perflab.grading import grader


@pytest.mark.parametrize("lab", LABS)
def test_the_solution_passes(lab, tiny_data):
    """No check fails or errs; a timed check may say "inconclusive — rerun" on a machine too busy to judge."""
    report = graded(lab, "solution")
    assert report.problem is None, report.text()
    # Every cell ran clean, but for self-checks that count statements (the sandbox may not read the log).
    assert all(grader.SELF_CHECK_STOPPED in note for note in report.notebook_notes), report.text()
    not_passed = [(o.exercise, o.name, o.status) for o in report.checks if o.status != "passed"]
    assert all(status == "inconclusive" for *_, status in not_passed), report.text()
    assert report.exit_code == (0 if not not_passed else 3), report.text()


@pytest.mark.parametrize("lab", LABS)
def test_the_solutions_self_checks_pass_in_a_learners_kernel(lab, tiny_data, tmp_path):
    """What a learner sees on finishing the lab: every cell of the solution runs clean in a plain kernel.

    The graded run above already ran every cell, in the sandbox; only the self-checks that count statements
    stop there (the sandbox may not read the server's log). A solution with such a cell runs once more,
    outside the grader, where they run; one without is not run twice."""
    report = graded(lab, "solution")
    stopped = [note for note in report.notebook_notes if grader.SELF_CHECK_STOPPED in note]
    if not stopped:
        return
    result = notebooks.execute(solution(lab), out_path=tmp_path / solution(lab).name, cell_timeout=300)
    assert not result.failures, [run.describe() for run in result.failures]


@pytest.mark.parametrize("lab", LABS)
def test_the_starter_scores_zero(lab, tiny_data):
    """An untouched starter is not an attempt: every exercise scores 0 and the report says "failed"."""
    report = graded(lab, "starter")
    assert report.problem is None and not report.passed and report.exit_code == 1, report.text()
    assert report.score == 0 and all(exercise.score == 0 for exercise in report.exercises), report.text()
    assert all(check.status == "failed" for check in report.checks), report.text()
    results = json.loads((report.out_dir / "results.json").read_text())
    assert results["score"] == 0 < results["max_score"] and results["tests"]


def test_labs_are_found_from_solutions():
    assert "08" in LABS and len(LABS) >= 9, LABS
