"""What the lab tests share.

* :data:`LABS`: every lab, found from ``solutions/NN_*.ipynb`` (a new lab is tested by construction);
* :func:`graded`: a lab's solution or starter, graded once per test run (``tests/test_labs.py`` and a
  lab's own test file share the report);
* :func:`submission`: the solution with some answer cells replaced (a slow-but-right or a
  fast-but-wrong answer), to be graded; :func:`judge`: the solution's answers with some replaced,
  judged by a few checks directly (what the grader does after running a notebook: seconds, not a run);
* :func:`expect`: a table of the outcome each check must have, ``{check: passes() | fails("phrase") | SLOW}``.
"""
from __future__ import annotations

import ast
import contextlib
import atexit
import shutil
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

from perflab import notebooks, paths  # noqa: F401  # notebooks first: it imports nbformat without a 1 s detour
import nbformat  # noqa: E402
from perflab.grading import grader
from perflab.grading.grader import GradingContext, RecordedFunction

LABS = sorted(p.name[:2] for p in paths.SOLUTIONS_DIR.glob("[0-9][0-9]_*.ipynb"))


def solution(lab: str) -> Path:
    return next(paths.SOLUTIONS_DIR.glob(f"{lab}_*.ipynb"))


def starter(lab: str) -> Path:
    return paths.LABS_DIR / solution(lab).name


_GRADED: dict = {}


def graded(lab: str, which: str):
    """``grader.grade`` of the lab's ``"solution"`` or ``"starter"``, once per test run; its out_dir
    (executed notebook, report.txt, results.json) is ``report.out_dir``."""
    if (lab, which) not in _GRADED:
        path = {"solution": solution, "starter": starter}[which](lab)
        out = Path(tempfile.mkdtemp(prefix=f"perflab-lab{lab}-{which}-"))
        atexit.register(shutil.rmtree, out, True)
        report = grader.grade(path, out_dir=out)
        report.out_dir = out
        _GRADED[(lab, which)] = report
    return _GRADED[(lab, which)]


def submission(lab: str, tmp_path: Path, answers: dict, name: str = "submission") -> Path:
    """The lab's solution with answer cells replaced: ``{match: source}``, where ``match`` is a string the
    cell contains (along with ``BEGIN SOLUTION``) or a predicate on the cell's source, and ``source`` the
    new cell, or a function of the old one."""
    notebook = nbformat.read(solution(lab), as_version=4)
    for match, source in answers.items():
        found = match if callable(match) else (lambda cell, m=match: m in cell and "BEGIN SOLUTION" in cell)
        cell = next((c for c in notebook.cells if c.cell_type == "code" and found(c.source)), None)
        assert cell is not None, f"no answer cell matching {match!r} in {solution(lab).name}"
        cell.source = source(cell.source) if callable(source) else source
    target = tmp_path / f"{lab}_{name}.ipynb"
    nbformat.write(notebook, target)
    return target


def solution_answers(lab: str) -> dict:
    """The solution's answers as the grader records them: functions as source, JSON values as values."""
    answers = {}
    for cell in nbformat.read(solution(lab), as_version=4).cells:
        if cell.cell_type != "code" or "BEGIN SOLUTION" not in cell.source:
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                answers[node.name] = RecordedFunction(node.name, textwrap.dedent(ast.get_source_segment(cell.source, node)))
            elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                with_value = _literal(node.value)
                if with_value is not None:
                    answers[node.targets[0].id] = with_value[0]
    return answers


def _literal(node) -> tuple | None:
    try:
        return (ast.literal_eval(node),)
    except ValueError:
        return None


def judge(lab: str, checks: list, **replaced) -> dict:
    """Run only ``checks`` (keys ``(exercise, name)``, or a check name alone) on the solution's answers with
    ``replaced`` swapped in, as `grader.grade` runs them once the notebook has run: each side in a sandbox of
    its own (the learner's functions re-created and called there, never in this process), with its own
    database role and clone and its own Redis. A replacement is source text when the solution's answer is a
    function, else the value itself (a string answer stays a string).

    What it skips is the notebook run, so use it only where that run cannot change the verdict. It refuses an
    exercise whose answers are all the starter as given (`grade` would not judge it: 0 points, "not
    attempted"), so a verdict it gives is one `grade` would give too."""
    from perflab.grading import sources

    spec = grader.load_lab(lab)
    answers = solution_answers(lab)
    for name, value in replaced.items():
        function = isinstance(answers.get(name), RecordedFunction)
        answers[name] = RecordedFunction(name, textwrap.dedent(value).strip() + "\n") if function else value
    wanted = {(exercise.name, check.name) for exercise in spec.exercises for check in exercise.checks
              if (exercise.name, check.name) in checks or check.name in checks}
    found = {name for _, name in wanted} | set(wanted)
    unknown = [key for key in checks if key not in found]
    assert not unknown, f"lab {lab} has no check {unknown}"
    starters = sources.originals(spec)
    for exercise in spec.exercises:
        if any(key[0] == exercise.name for key in wanted):
            assert not grader.still_the_starter(exercise, answers, starters), \
                f"{exercise.name}: still the starter, grade() would not judge it"
    with contextlib.ExitStack() as resources:
        ctx = GradingContext(lab=spec, submission=Path(f"{lab}_variant.ipynb"), answers=answers, answer_errors={},
                             limits=spec.limits, _resources=resources)
        return {(exercise.name, check.name): grader._run_check(exercise, check, ctx)
                for exercise in spec.exercises for check in exercise.checks if (exercise.name, check.name) in wanted}


def outcomes(report) -> dict:
    """Every check's outcome, keyed by (exercise, check name)."""
    return {(exercise.name, check.name): check for exercise in report.exercises for check in exercise.checks}


@dataclass(frozen=True)
class Expected:
    statuses: frozenset
    says: tuple = ()  # phrases the message must contain

    def problem(self, outcome) -> str | None:
        if outcome.status not in self.statuses:
            return f"{outcome.status}, not {'/'.join(sorted(self.statuses))}: {outcome.message}"
        missing = [phrase for phrase in self.says if phrase not in outcome.message]
        return f"the message lacks {missing}: {outcome.message}" if missing else None


def passes(*says: str) -> Expected:
    return Expected(frozenset({"passed"}), says)


def fails(*says: str) -> Expected:
    return Expected(frozenset({"failed"}), says)


SLOW = Expected(frozenset({"failed", "inconclusive"}))  # a timed check on a slow answer (a noisy run: inconclusive)
TIMED = Expected(frozenset({"passed", "inconclusive"}))  # a timed check on a fast answer: never "failed"


def expect(judged, table: dict) -> dict:
    """Assert every check in ``table`` (a key ``(exercise, name)``, or a check name alone) has its
    expected outcome; ``judged`` is a report or :func:`judge`'s dict. Returns every outcome, by
    ``(exercise, name)`` and by the table's own keys."""
    found = dict(outcomes(judged) if hasattr(judged, "exercises") else judged)
    problems = []
    for key, expected in table.items():
        matches = [o for k, o in list(found.items()) if k == key or k[1] == key]
        if len(matches) != 1:
            problems.append(f"{key}: {len(matches)} checks of that name")
            continue
        found[key] = matches[0]
        if (problem := expected.problem(matches[0])) is not None:
            problems.append(f"{key}: {problem}")
    shown = judged.text() if hasattr(judged, "text") else ""
    assert not problems, "\n".join(problems) + ("\n\n" + shown if shown else "")
    return found
