"""Every notebook, solution and lab is executed or graded by some test; none is committed with outputs.

The solutions are run by the grader (tests/test_labs.py: graded, then run in a plain kernel where a
self-check could not run in the sandbox); the labs are their starters, graded there too."""
import json
import subprocess
from pathlib import Path

import pytest

from perflab import labgen, paths

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted(paths.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
SOLUTIONS = sorted(paths.SOLUTIONS_DIR.glob("[0-9][0-9]_*.ipynb"))
LABS = sorted(paths.LABS_DIR.glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", LESSONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_lesson_runs_end_to_end_at_tiny_scale(notebook, course_run):
    """As `make run` does (results, figures and claims land in the session's build folder for the report)."""
    assert course_run.run(notebook), (paths.BUILD_DIR / "runs.json").read_text() if (paths.BUILD_DIR / "runs.json").exists() else ""


def test_every_notebook_and_lab_is_covered_by_a_test():
    """The guard: a new notebook is executed above by construction; a new lab needs its grading test."""
    assert LESSONS, "no lesson notebooks found"
    for lab in LABS + SOLUTIONS:
        number = lab.name[:2]
        assert (ROOT / "tests" / f"test_lab{number}.py").exists(), (
            f"{lab} has no grading test: add tests/test_lab{number}.py (starter fails, solution passes, "
            "a slow and a wrong answer fail)")
        assert list((ROOT / "perflab" / "topics").glob(f"t{number}_*/checks.py")), f"{lab} has no checks module"
    assert {s.name for s in SOLUTIONS} == {lab.name for lab in LABS}, "every solution needs its generated lab"


def test_labs_are_up_to_date_with_solutions():
    assert labgen.stale_labs() == [], "labs/ is out of date: run `make labs`"


def test_notebooks_are_committed_without_outputs():
    tracked = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    candidates = [ROOT / name for name in tracked] or LESSONS + SOLUTIONS + LABS
    dirty = []
    for path in candidates:
        if not path.exists():
            continue
        cells = json.loads(path.read_text())["cells"]
        if any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code"):
            dirty.append(path.name)
    assert not dirty, f"notebooks with outputs (run `make strip`): {dirty}"


def test_each_lesson_starts_by_showing_versions_and_stack_health():
    for notebook in LESSONS + SOLUTIONS:
        cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
        assert "course.start(" in "".join(cells[0]["source"]), f"{notebook.name}: first code cell must call course.start()"
