"""The grader engine end to end on the pure-Python demo lab, and notebook execution under it.

No database: the demo lab (tests/fixtures/demo_lab) has needs_database=False. Each grading run
starts one real kernel (about a second).
"""
import dataclasses
import json
import sys
from pathlib import Path

import nbformat
import pytest

from perflab import labgen, notebooks
from perflab.grading import grader
from perflab.grading.grader import Check, CheckResult, Exercise, learner_code

v4 = nbformat.v4
FIXTURE = Path(__file__).parent / "fixtures" / "demo_lab"
SOLUTION = FIXTURE / "99_demo.ipynb"
DEMO = grader.load_lab(FIXTURE / "checks.py")
# A short per-cell limit keeps the infinite-loop case quick; the demo's cells take milliseconds.
FAST = dataclasses.replace(DEMO, cell_timeout=3, total_timeout=60)


def variant(tmp_path: Path, edit, name: str = "99_demo.ipynb") -> Path:
    """A copy of the solution with ``edit(cells_by_id, notebook)`` applied."""
    nb = nbformat.read(SOLUTION, as_version=4)
    edit({cell.id: cell for cell in nb.cells}, nb)
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def statuses(report) -> dict[str, list[str]]:
    return {ex.name: [check.status for check in ex.checks] for ex in report.exercises}


def messages(report, exercise: str) -> str:
    return " | ".join(c.message for ex in report.exercises if ex.name == exercise for c in ex.checks)


@pytest.fixture(scope="module")
def solution_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("graded")
    return grader.grade(SOLUTION, FAST, out_dir=out), out


# ---- grading -----------------------------------------------------------------------------------


def test_the_solution_passes_with_full_score(solution_report):
    report, out = solution_report
    assert (report.score, report.max_score) == (4, 4)
    assert report.passed and report.status == "passed" and report.exit_code == 0
    assert statuses(report) == {"dedupe": ["passed", "passed"], "total": ["passed"]}
    assert "Score: 4/4" in report.text() and "PASSED" in report.text()
    assert (out / "report.txt").read_text() == report.text()
    assert (out / "executed_99_demo.ipynb").exists()


def test_results_json_has_the_gradescope_shape(solution_report):
    report, out = solution_report
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"score", "max_score", "output", "tests"}
    assert results["score"] == 4 and results["max_score"] == 4 and isinstance(results["output"], str)
    assert len(results["tests"]) == 3
    for test in results["tests"]:
        assert set(test) == {"name", "score", "max_score", "output", "status", "visibility"}
        assert test["status"] in ("passed", "failed") and test["visibility"] == "visible"
        assert isinstance(test["score"], (int, float)) and isinstance(test["name"], str)
    assert sum(t["score"] for t in results["tests"]) == results["score"]
    assert sum(t["max_score"] for t in results["tests"]) == results["max_score"]


def test_the_generated_starter_fails_every_exercise(tmp_path):
    starter = tmp_path / "99_demo.ipynb"
    starter.write_text(labgen.render(labgen.generate(SOLUTION)))
    report = grader.grade(starter, FAST, results_json=tmp_path / "r.json")
    assert report.score == 0 and report.exit_code == 1 and report.status == "failed"
    assert statuses(report) == {"dedupe": ["failed", "failed"], "total": ["failed"]}
    # An untouched exercise is not attempted: 0 points, whatever its checks would say of the starter.
    assert "dedupe is still the starter code" in messages(report, "dedupe")
    assert "TOTAL is still the starter code" in messages(report, "total")
    assert json.loads((tmp_path / "r.json").read_text())["score"] == 0


def test_an_infinite_loop_fails_only_its_exercise(tmp_path):
    def loop_forever(cells, nb):
        cells["demo-3"].source = "while True:\n    pass\n\n" + cells["demo-3"].source

    report = grader.grade(variant(tmp_path, loop_forever), FAST)
    assert statuses(report) == {"dedupe": ["failed", "failed"], "total": ["passed"]}
    why = messages(report, "dedupe")
    assert "dedupe was never set because cell 4 (`while True:`) timed out after 3 s (infinite loop?)" in why
    assert report.score == 1 and report.exit_code == 1
    assert any("timed out" in note for note in report.notebook_notes)


def test_an_exception_in_a_cell_fails_only_its_exercise(tmp_path):
    def raise_first(cells, nb):
        cells["demo-3"].source = "cache = undefined_cache\n" + cells["demo-3"].source

    report = grader.grade(variant(tmp_path, raise_first), FAST)
    assert statuses(report) == {"dedupe": ["failed", "failed"], "total": ["passed"]}
    assert (
        "cell 4 (`cache = undefined_cache`) raised NameError: name 'undefined_cache' is not defined (line 1)"
        in messages(report, "dedupe")
    )


def test_a_dead_kernel_keeps_the_answers_recorded_before_it(tmp_path):
    def crash_between_exercises(cells, nb):
        crash = v4.new_code_cell("import os\nos._exit(1)")
        crash.id = "crash"
        nb.cells.insert(nb.cells.index(cells["demo-5"]), crash)

    report = grader.grade(variant(tmp_path, crash_between_exercises), FAST)
    assert statuses(report) == {"dedupe": ["passed", "passed"], "total": ["failed"]}
    why = messages(report, "total")
    assert "TOTAL was never set: cell 8 (`# TOTAL = None  # the sum of n * n for n = 1..100`) never ran" in why
    assert "the kernel had died while running cell 6 (`import os`)" in why


def test_missing_and_unrecordable_answers_say_why(tmp_path):
    def rename_and_use_a_set(cells, nb):
        cells["demo-3"].source = cells["demo-3"].source.replace("def dedupe(", "def dedup(")
        cells["demo-6"].source = "TOTAL = {n * n for n in range(1, 101)}"

    report = grader.grade(variant(tmp_path, rename_and_use_a_set), FAST)
    assert report.score == 0
    assert "dedupe is not defined — did you run/keep the cell that defines dedupe?" in messages(report, "dedupe")
    assert "TOTAL is a set, which the grader cannot record" in messages(report, "total")


def test_an_inconclusive_check_gives_exit_code_3(tmp_path):
    too_noisy = Check("faster than the starter", lambda ctx: CheckResult.inconclusive("reference vs itself: CI ±35%"), 1)
    spec = dataclasses.replace(
        FAST, exercises=[*FAST.exercises, Exercise("timing", "Exercise 3 — timing", None, ["TOTAL"], [too_noisy])]
    )
    report = grader.grade(SOLUTION, spec, results_json=tmp_path / "results.json")
    assert report.status == "inconclusive" and report.exit_code == 3 and not report.passed
    assert (report.score, report.max_score) == (4, 5)
    assert "RERUN" in report.text() and "inconclusive — rerun: reference vs itself" in report.text()
    tests = json.loads((tmp_path / "results.json").read_text())["tests"]
    assert "status" not in tests[-1] and "score" not in tests[-1], tests[-1]  # inconclusive, not failed
    assert tests[-1]["name"].endswith("(inconclusive — rerun)") and tests[-1]["output"].startswith("inconclusive — rerun")


def test_learner_errors_fail_while_check_bugs_are_grader_errors(tmp_path):
    def bad_sql(ctx):
        with learner_code("MARCH_SQL"):
            raise RuntimeError('syntax error at or near "SELEC"\nLINE 1: SELEC 1')

    def buggy_check(ctx):
        return ctx.scratch["never set"]

    spec = dataclasses.replace(
        FAST,
        exercises=[
            *FAST.exercises,
            Exercise("sql", "Exercise 3", None, ["TOTAL"], [Check("runs", bad_sql, 1), Check("buggy", buggy_check, 1)]),
        ],
    )
    report = grader.grade(SOLUTION, spec)
    sql = next(ex for ex in report.exercises if ex.name == "sql")
    assert [c.status for c in sql.checks] == ["failed", "error"]
    assert sql.checks[0].message == 'running MARCH_SQL failed: RuntimeError: syntax error at or near "SELEC"'
    assert "check 'buggy' crashed with KeyError" in sql.checks[1].message
    assert "traceback" in sql.checks[1].details
    assert report.exit_code == 1  # a real failure outranks the grader error


def test_status_precedence_and_pass_mark():
    def report_with(*statuses, pass_mark=1.0):
        checks = [
            grader.CheckOutcome("ex", f"c{i}", s, 1 if s == "passed" else 0, 1, "") for i, s in enumerate(statuses)
        ]
        ex = grader.ExerciseReport("ex", "Exercise", len(checks), checks)
        return grader.GradeReport(Path("x.ipynb"), "99", "Demo", [ex], pass_mark=pass_mark)

    assert report_with("passed", "error").exit_code == 4
    assert report_with("passed", "error", "inconclusive").exit_code == 4
    assert report_with("passed", "inconclusive").exit_code == 3
    assert report_with("failed", "inconclusive").exit_code == 1
    assert report_with("passed", "passed", "failed", pass_mark=0.6).exit_code == 0


def test_a_malformed_notebook_is_invalid_with_a_clear_message(tmp_path):
    broken = tmp_path / "99_demo.ipynb"
    broken.write_text('{"cells": [ {"cell_type": "code", ')
    report = grader.grade(broken, FAST, out_dir=tmp_path / "out")
    assert report.status == "invalid" and report.exit_code == 2 and report.score == 0
    assert report.max_score == 4
    text = report.text()
    assert "99_demo.ipynb is not a valid notebook: its JSON is broken at line 1" in text
    assert "Fix:" in text
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["score"] == 0 and results["tests"] == [] and "not a valid notebook" in results["output"]


def test_a_kernel_that_does_not_start_is_retried_once_then_a_grader_error(tmp_path, monkeypatch):
    """No learner code has run when a kernel fails to start: one more try, then status "error" (exit 4)
    with the kernel's own log, never a failed or zero-scored submission."""
    real, calls = notebooks.execute, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1 or fail_always:
            raise notebooks.NotebookError("could not start a Python kernel: Kernel didn't respond in 60 seconds")
        return real(*args, **kwargs)

    monkeypatch.setattr(notebooks, "execute", flaky)
    fail_always = False
    report = grader.grade(SOLUTION, FAST, out_dir=tmp_path / "once")
    assert len(calls) == 2 and report.passed and report.score == 4
    calls.clear()
    fail_always = True
    report = grader.grade(SOLUTION, FAST, out_dir=tmp_path / "always")
    assert len(calls) == 2 and report.status == "error" and report.exit_code == 4
    assert "Kernel didn't respond" in report.problem


def test_the_lab_is_inferred_from_the_file_name_prefix(tmp_path):
    nameless = tmp_path / "my_lab.ipynb"
    nameless.write_text(SOLUTION.read_text())
    report = grader.grade(nameless)
    assert report.exit_code == 2 and "keep the lab's NN_ prefix" in report.problem
    unknown = tmp_path / "98_nothing.ipynb"
    unknown.write_text(SOLUTION.read_text())
    assert "there is no lab 98" in grader.grade(unknown).problem


def test_load_lab_accepts_ids_files_and_specs():
    assert grader.load_lab(DEMO) is DEMO
    assert grader.load_lab(str(FIXTURE / "checks.py")).id == "99"
    with pytest.raises(grader.LabNotFound, match="there is no lab 97"):
        grader.load_lab("97")
    with pytest.raises(ValueError, match="checks add up to 2"):
        Exercise("x", "X", 3, ["A"], [Check("a", lambda ctx: True, 2)])


# ---- notebook execution ------------------------------------------------------------------------


def write_notebook(path: Path, *sources: str, tags: dict[int, list[str]] | None = None) -> Path:
    nb = v4.new_notebook()
    nb.cells = [v4.new_markdown_cell("# Title")] + [v4.new_code_cell(s) for s in sources]
    for index, cell_tags in (tags or {}).items():
        nb.cells[index].metadata["tags"] = cell_tags
    nbformat.write(nb, path)
    return path


def test_execute_uses_this_interpreter_and_the_given_env(tmp_path):
    path = write_notebook(
        tmp_path / "t.ipynb",
        "import os, sys\nprint(sys.executable)\nprint(os.environ['PERFLAB_PROBE'])",
        "raise ValueError('shown on purpose')",
        "print(os.getcwd())",
        tags={2: ["raises-exception"]},
    )
    result = notebooks.execute(path, env={"PERFLAB_PROBE": "probe-42"}, out_path=tmp_path / "out" / "t.ipynb")
    assert result.ok and [c.status for c in result.cells] == ["ok", "error", "ok"]
    executed = nbformat.read(tmp_path / "out" / "t.ipynb", as_version=4)
    printed = executed.cells[1].outputs[0]["text"].splitlines()
    assert printed == [sys.executable, "probe-42"]
    assert executed.cells[3].outputs[0]["text"].strip() == str(tmp_path)  # cwd: the notebook's folder
    assert set(result.durations) == {1, 2, 3} and all(s >= 0 for s in result.durations.values())


def test_a_cell_error_names_the_notebook_cell_and_exception(tmp_path):
    path = write_notebook(tmp_path / "broken.ipynb", "x = 1", "\ny = x\nz = y / 0", "print('never')")
    with pytest.raises(notebooks.NotebookError) as error:
        notebooks.execute(path)
    message = str(error.value)
    assert message == f"{path}: cell 3 (`y = x`) raised ZeroDivisionError: division by zero (line 3)"
    assert "\x1b" not in message
    assert [c.status for c in error.value.result.cells] == ["ok", "error", "not_run"]


def test_the_total_time_limit_stops_the_run(tmp_path):
    path = write_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(0.5)", "time.sleep(30)", "print(1)")
    result = notebooks.execute(path, total_timeout=2, cell_timeout=20, allow_errors=True)
    assert [c.status for c in result.cells] == ["ok", "timeout", "not_run"]
    assert "total time limit" in result.cells[1].describe()
    assert result.seconds < 10


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{not json", "its JSON is broken at line 1, column 2"),
        ('{"cells": [{"cell_type": "code"}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}', "missing an expected key"),
        ('{"cells": [{"cell_type": "code", "source": 3, "metadata": {}, "outputs": []}], "metadata": {}, '
         '"nbformat": 4, "nbformat_minor": 4}', "at cells/0"),
        ('["a list"]', "not a Jupyter notebook"),
    ],
)
def test_a_malformed_notebook_names_the_file_and_the_fix(tmp_path, content, expected):
    path = tmp_path / "bad.ipynb"
    path.write_text(content)
    with pytest.raises(notebooks.MalformedNotebook) as error:
        notebooks.execute(path)
    assert str(path) in str(error.value) and expected in str(error.value) and "Fix:" in str(error.value)
