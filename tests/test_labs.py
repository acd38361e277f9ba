"""Every lab, found from ``solutions/NN_*.ipynb``: its solution passes, its starter fails every exercise
that needs work (``labtools.STARTER_COMPLETES`` names the few a starter already completes).

Each is graded once per run (``labtools.graded``): the lab's own test file (``tests/test_labNN.py``)
reads the same reports for the diagnoses it expects, then grades its slow-but-right and fast-but-wrong
answers.
"""
import json

import pytest

from labtools import LABS, STARTER_COMPLETES, graded


@pytest.mark.parametrize("lab", LABS)
def test_the_solution_passes(lab, tiny_data):
    """No check fails or errs; a timed check may say "inconclusive — rerun" on a machine too busy to judge."""
    report = graded(lab, "solution")
    assert report.problem is None, report.text()
    not_passed = [(o.exercise, o.name, o.status) for o in report.checks if o.status != "passed"]
    assert all(status == "inconclusive" for *_, status in not_passed), report.text()
    assert report.exit_code == (0 if not not_passed else 3), report.text()


@pytest.mark.parametrize("lab", LABS)
def test_the_starter_fails_every_exercise_that_needs_work(lab, tiny_data):
    """Each exercise that needs work has a failed check and less than its points (a starter that is the
    right-but-slow original keeps its correctness points); the report says "failed" (exit code 1)."""
    report = graded(lab, "starter")
    assert report.problem is None and not report.passed and report.exit_code == 1, report.text()
    complete = STARTER_COMPLETES.get(lab, set())
    assert complete <= {exercise.name for exercise in report.exercises}, complete
    for exercise in report.exercises:
        if exercise.name in complete:
            assert exercise.score == exercise.max_score, (exercise.name, report.text())
            continue
        assert any(check.status == "failed" for check in exercise.checks), (exercise.name, report.text())
        assert exercise.score < exercise.max_score, (exercise.name, report.text())
    results = json.loads((report.out_dir / "results.json").read_text())
    assert results["score"] == report.score < results["max_score"] and results["tests"]


def test_labs_are_found_from_solutions():
    assert "08" in LABS and len(LABS) >= 9, LABS
