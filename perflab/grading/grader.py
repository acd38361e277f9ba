"""Grade a lab submission: run it in a fresh kernel, then judge its answers in the grader's process.

Usage (what ``perflab grade`` / ``make grade LAB=NN SUBMISSION=…`` does)::

    from perflab.grading.grader import grade

    report = grade("work/01_let_the_index_work.ipynb")          # lab inferred from the NN_ prefix
    print(report.text())
    raise SystemExit(report.exit_code)                # 0 passed, 1 failed, 2 invalid, 3 inconclusive, 4 grader error

How a run goes:

1. The submission must be a readable notebook, else the report is "invalid" (score 0, exit code 2)
   with the reason and the fix.
2. Labs that need the database get two throwaway clones of the course data: one for the learner's
   kernel (``DATABASE_URL``), one for the checks (``ctx.dsn``). Learner code never touches the course
   database itself.
3. The notebook runs top to bottom in a fresh kernel (``PERFLAB_GRADING=1``), each cell limited to
   ``spec.cell_timeout`` seconds and the whole run to ``spec.total_timeout``; a failing cell does not
   stop the run. After every code cell a hidden step records the lab's answer names that are defined:
   JSON values as they are, functions and classes as their source text. A later crash, timeout or
   dead kernel therefore loses nothing recorded before it.
4. Each exercise whose answers were all recorded has its checks run here, in the grader's process;
   an exercise with a missing answer fails every check with the reason (the cell that raised or
   timed out, or "not defined"), and the others are graded as usual.
5. The report gives each check's verdict and message, the score, and writes a Gradescope-format
   ``results.json`` when asked.

Writing a lab's checks (``perflab/topics/tNN_<slug>/checks.py`` defines ``LAB``)::

    from perflab.grading.grader import Check, CheckResult, Exercise, LabSpec, learner_code
    from perflab.probes import explain

    def uses_the_index(ctx):
        with learner_code("MARCH_SQL"):                # an error here is the learner's, not the grader's
            plan = explain(ctx.dsn, ctx.answers["MARCH_SQL"])
        if plan.has("Seq Scan", "orders"):
            return CheckResult.fail("MARCH_SQL still scans the whole table: compare the column itself "
                                    "with a date range instead of wrapping it in EXTRACT()")
        return CheckResult.ok("MARCH_SQL uses the index on created_at")

    LAB = LabSpec(id="01", title="Let the index work", solution="01_let_the_index_work.ipynb", exercises=[
        Exercise("march", "Orders in March", None, ["MARCH_SQL"], [Check("uses the index", uses_the_index, 2)]),
    ])

A check returns a `CheckResult` (or a bool). Raising `SubmissionError` fails the check with its
message; raising `Inconclusive` (or returning ``CheckResult.inconclusive``) marks it "inconclusive —
rerun": no points, not a failure. Any other exception is a bug in the check: status "error".
Checks of one run share ``ctx.scratch`` (e.g. a reference timing measured once).
"""
from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import json
import re
import sys
import textwrap
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

from perflab import paths
from perflab.grading.jail import Limits

__all__ = [
    "grade",
    "load_lab",
    "LabSpec",
    "Exercise",
    "Check",
    "CheckResult",
    "GradingContext",
    "GradeReport",
    "RecordedFunction",
    "Remote",
    "SubmissionError",
    "Inconclusive",
    "LabNotFound",
    "learner_code",
    "call_submitted",
]

STATUSES = ("passed", "failed", "inconclusive", "error")
EXIT_CODES = {"passed": 0, "failed": 1, "invalid": 2, "inconclusive": 3, "error": 4}

_LAB_PREFIX = re.compile(r"^(\d+)_")


class SubmissionError(Exception):
    """Raised by a check when the learner's answer itself is broken (SQL error, wrong type, crash).

    The check fails with this message; it is not reported as a grader bug.
    """


class Inconclusive(Exception):
    """Raised by a check when this run cannot judge (e.g. timings too noisy): rerun, not a failure."""


class LabNotFound(LookupError):
    """No lab specification for the given id, module or file."""


# ---------------------------------------------------------------------------------------------
# Lab specifications


@dataclass(frozen=True)
class CheckResult:
    """A check's verdict. ``status`` defaults from ``passed``; use the constructors below."""

    passed: bool
    message: str
    status: str = ""
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", "passed" if self.passed else "failed")
        if self.status not in STATUSES:
            raise ValueError(f"CheckResult status must be one of {STATUSES}, not {self.status!r}")
        if self.passed != (self.status == "passed"):
            raise ValueError(f"CheckResult(passed={self.passed}) contradicts status {self.status!r}")

    @classmethod
    def ok(cls, message: str = "", **details: Any) -> "CheckResult":
        return cls(True, message, "passed", details)

    @classmethod
    def fail(cls, message: str, **details: Any) -> "CheckResult":
        return cls(False, message, "failed", details)

    @classmethod
    def inconclusive(cls, message: str, **details: Any) -> "CheckResult":
        return cls(False, message, "inconclusive", details)


@dataclass(frozen=True)
class Check:
    """One judged property of an exercise; ``fn(ctx)`` returns a `CheckResult` (or a bool)."""

    name: str
    fn: Callable[["GradingContext"], "CheckResult | bool"]
    points: float = 1


@dataclass(frozen=True)
class Exercise:
    """An exercise: the answer names it needs and its checks.

    ``points`` may be None (the checks' points add up to it); if given it must equal that sum.
    """

    name: str
    title: str
    points: float | None
    answers: list[str]
    checks: list[Check]

    def __post_init__(self) -> None:
        total = sum(check.points for check in self.checks)
        if self.points is None:
            object.__setattr__(self, "points", total)
        elif abs(self.points - total) > 1e-9:
            raise ValueError(
                f"exercise {self.name!r}: points={self.points} but its checks add up to {total}; "
                "make them agree (or pass points=None)"
            )
        if not self.answers:
            raise ValueError(f"exercise {self.name!r} names no answers; list the variables or functions it grades")


@dataclass(frozen=True)
class LabSpec:
    """A lab: its exercises and how to run a submission."""

    id: str
    title: str
    solution: str  # file name in solutions/ (an absolute path is used as is)
    exercises: list[Exercise]
    needs_database: bool = True
    cell_timeout: float = 120
    total_timeout: float = 900
    pass_mark: float = 1.0  # fraction of max_score needed to pass
    # What a recorded function may use without importing it ("module:NAME", a dict in course code).
    namespace: str | None = None
    needs_redis: bool = False  # the sandboxes get a throwaway Redis of their own
    # The course's read replica is started, and the kernel gets PERFLAB_REPLICA_URL: its own role and clone
    # there (both replicate), so the lab's notebook runs under grading as it does for the learner.
    needs_replica: bool = False
    limits: Limits = field(default_factory=Limits)  # the sandbox's limits (the instructor may override)

    def __post_init__(self) -> None:
        lab_id = str(self.id)
        object.__setattr__(self, "id", f"{int(lab_id):02d}" if lab_id.isdigit() else lab_id)
        names = [exercise.name for exercise in self.exercises]
        if len(set(names)) != len(names):
            raise ValueError(f"lab {self.id}: exercise names must be unique, got {names}")
        if not 0 < self.pass_mark <= 1:
            raise ValueError(f"lab {self.id}: pass_mark is a fraction in (0, 1], got {self.pass_mark}")

    @property
    def max_score(self) -> float:
        return sum(exercise.points for exercise in self.exercises)

    @property
    def answer_names(self) -> list[str]:
        return list(dict.fromkeys(name for exercise in self.exercises for name in exercise.answers))

    @property
    def solution_path(self) -> Path:
        path = Path(self.solution)
        return path if path.is_absolute() else Path(paths.SOLUTIONS_DIR) / path


# Labs are found by name, never imported statically: the grader is engine code and knows no topic.
# A lab NN is the ``checks`` module of the topic folder ``perflab/topics/tNN_<slug>/``.
TOPICS_PACKAGE = "perflab.topics"


def _topic_folders() -> dict[str, str]:
    """``{"01": "t01_index", ...}`` for every topic folder that has a ``checks.py``."""
    root = Path(paths.ROOT) / "perflab" / "topics"
    return {folder.name[1:3]: folder.name for folder in sorted(root.glob("t[0-9][0-9]_*"))
            if (folder / "checks.py").is_file()}


def _available_labs() -> list[str]:
    return sorted(_topic_folders())


def _lab_from_module(module: ModuleType, origin: str) -> LabSpec:
    spec = getattr(module, "LAB", None)
    if not isinstance(spec, LabSpec):
        raise LabNotFound(f"{origin} does not define LAB = LabSpec(...)")
    return spec


def load_lab(lab: "LabSpec | str | int | Path") -> LabSpec:
    """The `LabSpec` for a lab id (``"02"``, ``"2"``, ``2``), a module path, a ``.py`` file, or a spec."""
    if isinstance(lab, LabSpec):
        return lab
    text = str(lab)
    if text.isdigit():
        number = f"{int(text):02d}"
        folder = _topic_folders().get(number)
        if folder is None:
            available = ", ".join(_available_labs()) or "none yet"
            raise LabNotFound(f"there is no lab {number} (no perflab/topics/t{number}_*/checks.py); labs: {available}")
        module_name = f"{TOPICS_PACKAGE}.{folder}.checks"
        module = importlib.import_module(module_name)
        return _lab_from_module(module, module_name)
    if text.endswith(".py") or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise LabNotFound(f"no lab checks file {path}")
        module_name = f"perflab_labspec_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
        spec.loader.exec_module(module)
        return _lab_from_module(module, str(path))
    try:
        module = importlib.import_module(text)
    except ModuleNotFoundError as exc:
        if exc.name and text.startswith(exc.name):
            raise LabNotFound(f"no lab module {text!r}; pass a lab number like 02 or a checks file") from None
        raise
    return _lab_from_module(module, text)


# ---------------------------------------------------------------------------------------------
# What checks see


@dataclass(frozen=True)
class RecordedFunction:
    """A function (or class) answer, recorded as its source text from the learner's kernel."""

    name: str
    source: str
    cell: int | None = None  # cell number (from 1) after which it was last recorded

    def __str__(self) -> str:
        return self.source


class Remote:
    """A function that lives in a sandbox: calling it sends the call over the channel (JSON in, JSON out).

    ``ctx.function("name")`` is the learner's; ``ctx.reference_function`` / ``ctx.original_function`` are
    the solution notebook's and the starter's, in the reference sandbox. ``driver`` names course code
    (``"perflab.topics.tNN_x.rig:function"``) that runs in the same sandbox and receives that side's
    answers first (``driver(answers, *args)``), to build what the call needs there (a session, a client,
    an event loop). The learner's errors and hangs become `SubmissionError`; the reference's, a grader error.
    """

    def __init__(self, ctx: "GradingContext", side: str, target: str | None, driver: str | None = None,
                 timeout: float = 30.0) -> None:
        self.ctx, self.side, self.target, self.driver, self.timeout = ctx, side, target, driver, timeout
        self.__name__ = target or (driver or "driver").rpartition(":")[2]

    def via(self, driver: str, timeout: float | None = None) -> "Remote":
        return Remote(self.ctx, self.side, self.target, driver, self.timeout if timeout is None else timeout)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.ctx.call(self.side, self.target, *args, driver=self.driver, timeout=self.timeout, **kwargs)

    def __repr__(self) -> str:
        return f"<{self.side} {self.__name__} in a sandbox>"


@dataclass
class GradingContext:
    """Everything a check gets: the recorded answers, why some are missing, sandboxes, databases, scratch.

    Nothing the learner wrote runs in the grader's process: ``function(name)`` returns a `Remote` that
    calls it in the submission's sandbox; the reference and the original run in a sandbox of their own
    (``reference_function``, ``original_function``), each with its own database role and clone (``dsn``,
    ``reference_dsn``: log in as that role) and, for labs that need one, its own Redis. They are started on
    first use, after the learner's kernel is gone. ``admin_dsn`` is the grader's own connection to the
    submission's clone (for probes); it is never given to a sandbox.
    """

    lab: LabSpec
    submission: Path
    answers: dict[str, Any]
    answer_errors: dict[str, str]
    execution: Any = None  # perflab.notebooks.ExecutionResult of the submission
    scratch: dict = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    _resources: Any = None  # contextlib.ExitStack owned by grade()
    _sides: dict = field(default_factory=dict)
    mode: str = ""

    # -- databases and sandboxes, made on first use ----------------------------------------
    def _side(self, side: str) -> dict:
        key = "submission" if side == "submission" else "reference"
        if key not in self._sides:
            from perflab.grading import isolation

            entry: dict[str, Any] = {}
            env = {"PERFLAB_GRADING": "1"}
            if self.lab.needs_database:
                entry["db"] = self._resources.enter_context(isolation.run_database())
                env["DATABASE_URL"] = entry["db"].dsn
            entry["redis"] = self._resources.enter_context(isolation.run_redis())
            env["REDIS_URL"] = entry["redis"].url
            entry["env"] = env
            self._sides[key] = entry
        return self._sides[key]

    def sandbox(self, side: str = "submission"):
        entry = self._side(side)
        if "box" not in entry:
            from perflab.grading import sources
            from perflab.grading.sandbox import Sandbox

            name = "submission" if side == "submission" else "reference"
            box = self._resources.enter_context(Sandbox.start(name, self.limits, entry["env"]))
            self.mode = box.mode
            if name == "submission":
                from perflab.grading.sandbox import SandboxError

                functions = {k: v for k, v in self.answers.items() if isinstance(v, RecordedFunction)}
                try:
                    problems = box.load("submission", functions, namespace=self.lab.namespace)
                except SandboxError as exc:  # e.g. os._exit in a default argument: the learner's doing
                    raise SubmissionError(f"re-creating your functions stopped their process: {exc}") from None
                for answer, problem in problems.items():
                    self.answer_errors.setdefault(answer, problem)
            else:
                for slot, answers in (("reference", sources.references(self.lab)),
                                      ("original", sources.originals(self.lab))):
                    functions = {k: v for k, v in answers.items() if isinstance(v, RecordedFunction)}
                    problems = box.load(slot, functions, namespace=self.lab.namespace)
                    if problems:
                        raise RuntimeError(f"the {slot} answers of lab {self.lab.id} do not load: {problems}")
            entry["box"] = box
        return entry["box"]

    @property
    def dsn(self) -> str | None:
        """The submission's own clone, logged in as its role (run the learner's SQL here)."""
        return self._side("submission")["db"].dsn if self.lab.needs_database else None

    @property
    def admin_dsn(self) -> str | None:
        return self._side("submission")["db"].admin_dsn if self.lab.needs_database else None

    @property
    def role(self) -> str | None:
        return self._side("submission")["db"].role if self.lab.needs_database else None

    @property
    def reference_dsn(self) -> str | None:
        return self._side("reference")["db"].dsn if self.lab.needs_database else None

    @property
    def reference_admin_dsn(self) -> str | None:
        return self._side("reference")["db"].admin_dsn if self.lab.needs_database else None

    @property
    def reference_role(self) -> str | None:
        return self._side("reference")["db"].role if self.lab.needs_database else None

    def count_statements(self, admin_dsn: str | None = None):
        """``probes.count_statements`` of every connection of the submission's role (tagged or not), read
        from the server log through the grader's own admin connection."""
        from perflab import probes

        return probes.count_statements(admin_dsn or self.admin_dsn, role=self.role, role_dsn=self.dsn)

    def redis_url(self, side: str = "submission") -> str:
        return self._side(side)["redis"].url

    def sources(self, side: str) -> dict[str, Any]:
        """The reference's or the original's answers as written in the solution notebook."""
        from perflab.grading import sources

        return sources.references(self.lab) if side == "reference" else sources.originals(self.lab)

    # -- calling -----------------------------------------------------------------------------
    def call(self, side: str, target: str | None, *args: Any, driver: str | None = None, timeout: float = 30.0,
             **kwargs: Any) -> Any:
        """Call ``target`` (or ``driver``) in ``side``'s sandbox ("submission", "reference" or "original")."""
        from perflab.grading.sandbox import SandboxCallError, SandboxError, SandboxTimeout

        box = self.sandbox(side)
        try:
            return box.call(side, target or "", *args, driver=driver, timeout=timeout, **kwargs)
        except SandboxError as exc:  # the call's text is made only here, not on every (timed) call
            listed = [_brief(a, 40) for a in args] + [f"{k}={_brief(v, 40)}" for k, v in kwargs.items()]
            shown = f"{target or driver.rpartition(':')[2]}({', '.join(listed)})"
            learner = side == "submission"
            if isinstance(exc, SandboxCallError):
                if not learner:
                    raise RuntimeError(f"the {side} answer failed: {shown} raised {exc}") from None
                raise SubmissionError(f"{shown} raised {exc.type_name}: {exc.message}") from None
            if isinstance(exc, SandboxTimeout):
                if not learner:
                    raise Inconclusive(f"the {side} answer {shown} {exc}: the machine is too busy; rerun") from None
                raise SubmissionError(f"{shown} {exc}") from None
            if not learner:
                raise RuntimeError(f"the {side} sandbox failed: {exc}") from None
            raise SubmissionError(f"{shown}: {exc}") from None

    def function(self, name: str, namespace: Any = None, *, driver: str | None = None, timeout: float = 30.0) -> Remote:
        """The learner's answer ``name`` as a `Remote` (it runs in the submission's sandbox)."""
        value = self.answers[name]
        if not isinstance(value, RecordedFunction):
            raise SubmissionError(
                f"{name} should be a function (`def {name}(...):`), but your notebook sets it to a "
                f"{type(value).__name__}: {_brief(value)}"
            )
        if name in self.answer_errors:
            raise SubmissionError(self.answer_errors[name])
        self.sandbox("submission")
        if name in self.answer_errors:
            raise SubmissionError(self.answer_errors[name])
        return Remote(self, "submission", name, driver, timeout)

    def reference_function(self, name: str, *, driver: str | None = None, timeout: float = 30.0) -> Remote:
        return Remote(self, "reference", name, driver, timeout)

    def original_function(self, name: str, *, driver: str | None = None, timeout: float = 30.0) -> Remote:
        return Remote(self, "original", name, driver, timeout)


@contextlib.contextmanager
def learner_code(what: str) -> Iterator[None]:
    """Any exception inside is the learner's answer failing (e.g. a SQL syntax error), not a grader bug::

        with learner_code("MARCH_SQL"):
            cur.execute(ctx.answers["MARCH_SQL"])
    """
    try:
        yield
    except (SubmissionError, Inconclusive):
        raise
    except Exception as exc:
        message = str(exc).strip().splitlines()
        detail = message[0] if message else ""
        raise SubmissionError(f"running {what} failed: {type(exc).__name__}: {detail}") from exc


def call_submitted(fn: Callable, *args: Any, timeout: float = 10.0, **kwargs: Any) -> Any:
    """Call a learner's function (a `Remote`) with a time limit; its exception or hang is a `SubmissionError`.

    Learner code never runs in the grader's process, so ``fn`` must be a `Remote` (``ctx.function(...)``)."""
    if not isinstance(fn, Remote):
        raise TypeError(f"call_submitted needs a sandboxed function (ctx.function(...)), not {fn!r}")
    return Remote(fn.ctx, fn.side, fn.target, fn.driver, timeout)(*args, **kwargs)


def _brief(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Recording answers inside the learner's kernel

# Runs silently in the kernel after every code cell. It defines, calls and deletes one function so
# nothing is left in the learner's namespace; the file it merges into survives a later crash.
_RECORDER = textwrap.dedent(
    '''
    def _perflab_record_answers(names, path, cell_number):
        import builtins, inspect, json, os, textwrap
        namespace = globals()
        try:
            with builtins.open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = {"answers": {}, "problems": {}}
        for name in names:
            if name not in namespace:
                continue
            value = namespace[name]
            entry, problem = None, None
            if inspect.isfunction(value) or inspect.isclass(value):
                try:
                    source = textwrap.dedent(inspect.getsource(value))
                    own_name = name if value.__name__ == "<lambda>" else value.__name__
                    entry = {"kind": "function", "name": own_name, "source": source}
                except (OSError, TypeError):
                    problem = (f"{name} is a function whose source the grader cannot read; "
                               f"define it with a plain `def {name}(...):` in a cell")
            else:
                try:
                    json.dumps(value)
                    entry = {"kind": "value", "value": value}
                except (TypeError, ValueError):
                    problem = (f"{name} is a {type(value).__name__}, which the grader cannot record; "
                               "make it a str, number, list, dict or None")
            if entry is not None:
                entry["cell"] = cell_number
                saved["answers"][name] = entry
                saved["problems"].pop(name, None)
            else:
                saved["answers"].pop(name, None)
                saved["problems"][name] = {"message": problem, "cell": cell_number}
        with builtins.open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(saved, f)
        os.replace(path + ".tmp", path)
    '''
).strip()


def _recorder(names: list[str], answers_file: Path) -> Callable:
    def code_after(run) -> str:
        return (
            f"{_RECORDER}\n"
            f"_perflab_record_answers({names!r}, {str(answers_file)!r}, {run.number})\n"
            "del _perflab_record_answers\n"
        )

    return code_after


MAX_ANSWERS_BYTES = 16 * 1024 * 1024


def _load_answers(answers_file: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The answers the kernel recorded. The file was written by the learner's process: read it as
    untrusted JSON (bounded size, checked shapes), never as code."""
    try:
        if answers_file.stat().st_size > MAX_ANSWERS_BYTES:
            return {}, {}
        saved = json.loads(answers_file.read_text(encoding="utf-8"))
        answers: dict[str, Any] = {}
        for name, entry in dict(saved.get("answers", {})).items():
            if entry.get("kind") == "function":
                answers[str(name)] = RecordedFunction(str(entry["name"]), str(entry["source"]), entry.get("cell"))
            else:
                answers[str(name)] = entry.get("value")
        problems = {str(name): str(p["message"]) for name, p in dict(saved.get("problems", {})).items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return {}, {}
    return answers, problems


# ---------------------------------------------------------------------------------------------
# Why an answer is missing


def _module_level_names(source: str) -> set[str] | None:
    """Names a cell binds at module level, or None if it does not parse."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        source = TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001 - fall back to the raw source
        pass
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names: set[str] = set()
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue  # their bodies bind local names, not module-level ones
        if isinstance(node, ast.Lambda):
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        stack.extend(ast.iter_child_nodes(node))
    return names


def _defines(source: str, name: str) -> bool:
    names = _module_level_names(source)
    if names is not None:
        return name in names
    # The cell does not parse (its SyntaxError is what the learner must fix): match by text.
    name = re.escape(name)
    pattern = rf"^\s*(?:{name}\s*(?::[^=\n]*)?=(?!=)|(?:async\s+)?def\s+{name}\b|class\s+{name}\b)"
    return re.search(pattern, source, re.MULTILINE) is not None


def _why_missing(name: str, execution, problems: dict[str, str]) -> str:
    if name in problems:
        return problems[name]
    runs = execution.cells if execution is not None else []
    failures = [run for run in runs if run.failed and run.status != "not_run"]
    defining = [run for run in runs if _defines(run.source, name)]
    if not defining:
        reason = (
            f"{name} is not defined — did you run/keep the cell that defines {name}? "
            "(keep the name exactly as the lab spells it)"
        )
        if failures:
            reason += f"; note that {failures[0].describe()}"
        return reason
    cell = next((run for run in defining if run.failed), defining[0])
    earlier = [run for run in failures if run.index < cell.index]
    if cell.status in ("error", "timeout", "kernel_died"):
        reason = f"{name} was never set because {cell.describe()}"
        if earlier:
            reason += f" (an earlier cell had already failed: {earlier[0].describe()})"
        return reason
    if cell.status == "not_run":
        return f"{name} was never set: {cell.describe()}"
    if earlier:
        return f"{name} is not defined after {cell.label} ran, probably because {earlier[0].describe()}"
    return (
        f"{name} is not defined after {cell.label} ran — assign it at the top level of the cell "
        "(not only inside a function or an `if` branch that did not run)"
    )


# ---------------------------------------------------------------------------------------------
# The report


@dataclass
class CheckOutcome:
    exercise: str
    name: str
    status: str  # passed | failed | inconclusive | error
    score: float
    max_score: float
    message: str
    details: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return {"passed": "pass", "failed": "FAIL", "inconclusive": "RERUN", "error": "ERROR"}[self.status]

    @property
    def shown_message(self) -> str:
        if self.status == "inconclusive":
            return f"inconclusive — rerun: {self.message}"
        if self.status == "error":
            return f"grader error (not your fault): {self.message}"
        return self.message


@dataclass
class ExerciseReport:
    name: str
    title: str
    max_score: float
    checks: list[CheckOutcome]
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return sum(check.score for check in self.checks)


def _points(value: float) -> str:
    return f"{value:g}"


@dataclass
class GradeReport:
    """The outcome of `grade`: scores, every check's message, and how to print or export it."""

    submission: Path
    lab_id: str | None
    title: str | None
    exercises: list[ExerciseReport]
    pass_mark: float = 1.0
    problem: str | None = None  # why the submission could not be graded at all
    problem_status: str | None = None  # "invalid" (the submission) or "error" (the grader)
    notebook_notes: list[str] = field(default_factory=list)  # cells that failed while it ran
    seconds: float = 0.0
    lab_max_score: float | None = None
    sandbox: str = ""  # how learner code was isolated (a dedicated user, or the learner's own)

    @property
    def score(self) -> float:
        return sum(exercise.score for exercise in self.exercises)

    @property
    def max_score(self) -> float:
        if self.exercises:
            return sum(exercise.max_score for exercise in self.exercises)
        return self.lab_max_score or 0.0

    @property
    def passed(self) -> bool:
        return self.problem is None and self.max_score > 0 and self.score >= self.pass_mark * self.max_score - 1e-9

    @property
    def checks(self) -> list[CheckOutcome]:
        return [check for exercise in self.exercises for check in exercise.checks]

    @property
    def status(self) -> str:
        if self.problem is not None:
            return self.problem_status or "invalid"
        if self.passed:
            return "passed"
        statuses = {check.status for check in self.checks}
        for status in ("failed", "error", "inconclusive"):
            if status in statuses:
                return status
        return "failed"

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def text(self) -> str:
        lines = [f"Lab {self.lab_id or '?'}" + (f" — {self.title}" if self.title else ""), f"Submission: {self.submission}"]
        if self.problem is not None:
            label = "Cannot grade" if self.status == "invalid" else "Grader error"
            lines += ["", f"{label}: {self.problem}", "", f"Score: 0/{_points(self.max_score)} — {self.status.upper()}"]
            return "\n".join(lines) + "\n"
        for exercise in self.exercises:
            lines += ["", f"{exercise.title}: {_points(exercise.score)}/{_points(exercise.max_score)}"]
            if exercise.missing:
                # One reason for the whole exercise reads better than the same one under every check.
                lines += [f"  not graded: {reason}" for reason in exercise.missing.values()]
            for check in exercise.checks:
                head = f"  {check.verdict:<5}  {check.name} ({_points(check.score)}/{_points(check.max_score)})"
                shown = "" if exercise.missing else check.shown_message
                lines.append(head + (f": {shown}" if shown else ""))
        if self.notebook_notes:
            lines += ["", "While your notebook ran:"] + [f"  - {note}" for note in self.notebook_notes]
        if self.sandbox:
            lines += ["", f"Isolation: {self.sandbox}"]
        verdict = {
            "passed": "PASSED",
            "failed": "FAILED",
            "inconclusive": "INCONCLUSIVE — some checks could not judge this run (the machine was too "
            "noisy); rerun the grader",
            "error": "GRADER ERROR — a check crashed; this is not your fault, please report it",
        }[self.status]
        needed = self.pass_mark * self.max_score
        lines += ["", f"Score: {_points(self.score)}/{_points(self.max_score)} (pass mark {_points(needed)}) — {verdict}"]
        return "\n".join(lines) + "\n"

    def to_gradescope(self) -> dict:
        """Gradescope's results.json: score, max_score, output, and one test per check."""
        tests = []
        for exercise in self.exercises:
            for check in exercise.checks:
                test = {
                    "name": f"{exercise.title}: {check.name}",
                    "score": check.score,
                    "max_score": check.max_score,
                    "output": check.shown_message,
                    "status": "passed" if check.status == "passed" else "failed",
                    "visibility": "visible",
                }
                if check.status == "inconclusive":  # not judged: no score, no pass/fail, told to rerun
                    del test["score"], test["status"]
                    test["name"] += " (inconclusive — rerun)"
                tests.append(test)
        return {"score": self.score, "max_score": self.max_score, "output": self.text(), "tests": tests}

    def write_results_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_gradescope(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return path


# ---------------------------------------------------------------------------------------------
# Grading


def _run_check(exercise: Exercise, check: Check, ctx: GradingContext) -> CheckOutcome:
    started = time.monotonic()
    try:
        result = check.fn(ctx)
        if isinstance(result, bool):
            result = CheckResult(result, "" if result else "the answer does not meet this check")
        elif not isinstance(result, CheckResult):
            result = CheckResult(
                False, f"check {check.name!r} returned {_brief(result)} instead of a CheckResult", "error"
            )
    except SubmissionError as exc:
        result = CheckResult.fail(str(exc))
    except Inconclusive as exc:
        result = CheckResult.inconclusive(str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug in the check, reported as such
        result = CheckResult(
            False,
            f"check {check.name!r} crashed with {type(exc).__name__}: {exc}",
            "error",
            {"traceback": traceback.format_exc()},
        )
    return CheckOutcome(
        exercise=exercise.name,
        name=check.name,
        status=result.status,
        score=check.points if result.status == "passed" else 0,
        max_score=check.points,
        message=result.message,
        details=dict(result.details),
        seconds=time.monotonic() - started,
    )


def still_the_starter(exercise: Exercise, answers: dict[str, Any], starters: dict[str, Any]) -> bool:
    """Every answer of ``exercise`` is the starter's as given (comments, whitespace and docstrings aside): not an
    attempt, so not graded (0 points)."""
    from perflab.grading import sources

    return all(name in starters and sources.unchanged(answers[name], starters[name]) for name in exercise.answers)


def _grade_exercise(exercise: Exercise, ctx: GradingContext, starters: dict[str, Any]) -> ExerciseReport:

    missing = {name: ctx.answer_errors[name] for name in exercise.answers if name not in ctx.answers}
    untouched = not missing and still_the_starter(exercise, ctx.answers, starters)
    if missing or untouched:
        reason = "; ".join(missing.values()) if missing else (
            f"{', '.join(exercise.answers)} {'is' if len(exercise.answers) == 1 else 'are'} still the starter code: "
            "this exercise was not attempted, so it is not graded (0 points)")
        if untouched:
            missing = {"starter": reason}
        checks = [
            CheckOutcome(exercise.name, check.name, "failed", 0, check.points, f"not graded: {reason}")
            for check in exercise.checks
        ]
    else:
        checks = [_run_check(exercise, check, ctx) for check in exercise.checks]
    return ExerciseReport(exercise.name, exercise.title, exercise.points, checks, missing)


def _infer_lab(submission: Path) -> str:
    match = _LAB_PREFIX.match(submission.name)
    if not match:
        raise LabNotFound(
            f"cannot tell which lab {submission.name!r} is: keep the lab's NN_ prefix in the file name "
            "(e.g. 01_let_the_index_work.ipynb) or say which lab it is (LAB=02)"
        )
    return match.group(1)


# A self-check that counts statements reads the server's log, which the sandbox's database role may not: the
# cell stops there while grading. Said as what it is, not as an error of the learner's.
SELF_CHECK_STOPPED = "stopped at a self-check that counts statements on the server"


def _note(run) -> str:
    """What the report says of a cell that did not run clean."""
    from perflab.probes import ServerLogDenied  # raised in the kernel: known here by its name

    if run.status == "error" and run.ename == ServerLogDenied.__name__:
        where = f" (line {run.line})" if run.line else ""
        return (f"{run.label} {SELF_CHECK_STOPPED}{where}: while grading, only the grader reads the server's "
                "log (its own checks count the statements); on your machine this self-check runs")
    return run.describe()


def _log_tail(path: Path, lines: int = 12) -> str:
    """The last lines of a sandboxed kernel's log, for an error message (empty when there is none)."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return ("\nThe kernel's last words:\n" + "\n".join(text.splitlines()[-lines:])) if text else ""


def grade(
    submission: str | Path,
    lab: "LabSpec | str | int | None" = None,
    *,
    out_dir: str | Path | None = None,
    results_json: str | Path | None = None,
    limit_overrides: dict[str, int] | None = None,
) -> GradeReport:
    """Grade one submitted notebook; see the module docstring.

    ``lab``: a `LabSpec`, a lab id, a module path or a checks file; None infers it from the file
    name's ``NN_`` prefix. ``out_dir`` receives the executed notebook, ``report.txt`` and
    ``results.json``; ``results_json`` names the Gradescope file explicitly.
    """
    from perflab import notebooks

    started = time.monotonic()
    submission = Path(submission)
    spec: LabSpec | None = None

    def finish(report: GradeReport) -> GradeReport:
        report.seconds = time.monotonic() - started
        target = Path(results_json) if results_json else (Path(out_dir) / "results.json" if out_dir else None)
        if target is not None:
            report.write_results_json(target)
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "report.txt").write_text(report.text(), encoding="utf-8")
        return report

    def cannot_grade(message: str, status: str = "invalid") -> GradeReport:
        return finish(
            GradeReport(
                submission,
                spec.id if spec else None,
                spec.title if spec else None,
                [],
                pass_mark=spec.pass_mark if spec else 1.0,
                problem=message,
                problem_status=status,
                lab_max_score=spec.max_score if spec else None,
            )
        )

    try:
        spec = load_lab(lab if lab is not None else _infer_lab(submission))
    except LabNotFound as exc:
        return cannot_grade(str(exc))
    try:
        notebooks.read_notebook(submission)
    except notebooks.MalformedNotebook as exc:
        return cannot_grade(str(exc))

    from perflab.grading import isolation, sources
    from perflab.grading.jail import jail

    limits = spec.limits.override(**(limit_overrides or {}))
    with contextlib.ExitStack() as resources:
        # 1. The learner's kernel: a jail of its own, its own database role, clone and Redis.
        with contextlib.ExitStack() as kernel_resources:
            env = {"PERFLAB_GRADING": "1"}
            try:
                from perflab import stack

                stack.ensure()
                if spec.needs_database:
                    isolation.sweep_orphans()
                    kernel_db = kernel_resources.enter_context(isolation.run_database())
                    env["DATABASE_URL"] = kernel_db.dsn
                    if spec.needs_replica:
                        env["PERFLAB_REPLICA_URL"] = isolation.on_replica(kernel_db.dsn, stack.ensure_replica())
                env["REDIS_URL"] = kernel_resources.enter_context(isolation.run_redis()).url
            except Exception as exc:  # noqa: BLE001 - the grader's environment, not the learner
                return cannot_grade(
                    f"could not prepare the database for grading ({type(exc).__name__}: {exc}); "
                    "check `perflab status` and try again",
                    status="error",
                )
            box = kernel_resources.enter_context(jail("kernel", limits, env))
            env_for_kernel = dict(box.env, PERFLAB_STATE_DIR=str(box.workdir / "state"))
            box.env.update(env_for_kernel)
            answers_file = box.workdir / "answers.json"
            for attempt in (1, 2):
                try:
                    execution = notebooks.execute(
                        submission,
                        out_path=Path(out_dir) / f"executed_{submission.name}" if out_dir else None,
                        env=box.env,
                        inherit_env=False,
                        kernel_wrap=lambda argv: box.command(argv, connection_file_arg=True),
                        output_limit=limits.output_bytes,
                        cell_timeout=spec.cell_timeout,
                        total_timeout=spec.total_timeout,
                        cwd=box.workdir,
                        allow_errors=True,
                        extra_cells_after=_recorder(spec.answer_names, answers_file),
                    )
                    break
                except notebooks.MalformedNotebook as exc:
                    return cannot_grade(str(exc))
                except notebooks.NotebookError as exc:
                    # No kernel could start: the grader's environment, never the learner's code (none of it
                    # has run yet). Once more with a fresh kernel, then an error that shows the kernel's log.
                    box.kill_all()
                    if attempt == 2:
                        return cannot_grade(f"{exc}{_log_tail(box.workdir / 'kernel.log')}", status="error")
            box.kill_all()  # every process the notebook started, detached or not
            answers, problems = _load_answers(answers_file)
            mode = box.mode
        # 2. The kernel, its clone and its Redis are gone: the checks' sandboxes start on first use.
        answer_errors = {
            name: _why_missing(name, execution, problems) for name in spec.answer_names if name not in answers
        }
        ctx = GradingContext(
            lab=spec,
            submission=submission,
            answers=answers,
            answer_errors=answer_errors,
            execution=execution,
            limits=limits,
            _resources=resources,
            mode=mode,
        )
        starters = sources.originals(spec)
        exercises = [_grade_exercise(exercise, ctx, starters) for exercise in spec.exercises]
        sandbox_note = (f"learner code ran in a sandbox as {'a dedicated user' if mode == 'dedicated user' else 'your own user'} "
                        f"({limits.describe()})")

    notes = [_note(run) for run in execution.failures]
    if execution.stopped and not execution.kernel_died:
        notes.append(f"the run stopped early: {execution.stopped}")
    notes += [f"the grader's answer recorder failed {error}" for error in execution.hidden_errors]
    return finish(
        GradeReport(
            submission,
            spec.id,
            spec.title,
            exercises,
            pass_mark=spec.pass_mark,
            notebook_notes=notes,
            lab_max_score=spec.max_score,
            sandbox=sandbox_note,
        )
    )
