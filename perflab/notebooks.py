"""Execute a notebook in a fresh kernel, with per-cell and total time limits and short, clear errors.

`make run` (``perflab.report``) and the grader (``perflab.grader``) both execute notebooks through
this one function::

    from perflab.notebooks import execute, NotebookError

    result = execute("notebooks/01_let_the_index_work.ipynb", out_path="build/01_let_the_index_work.ipynb",
                     env={"PERFLAB_SCALE": "tiny"}, cell_timeout=600, total_timeout=3600)
    for cell in result.cells:                 # code cells, in order
        print(cell.number, cell.status, f"{cell.seconds:.1f} s", cell.first_line)

- The kernel is always *this* interpreter (``sys.executable``) running ipykernel, whatever
  kernelspecs are installed elsewhere on the machine, so the notebook sees the same packages as the
  code that started it. ``env`` is merged over ``os.environ``.
- A cell that raises stops the run with a `NotebookError` whose message names the notebook, the
  cell (numbered from 1, counting markdown cells, as you see them scrolling down), its first line
  and the exception, e.g.::

      notebooks/01_let_the_index_work.ipynb: cell 7 (`ratio = res.ratio()`) raised ZeroDivisionError: division by zero (line 2)

  With ``allow_errors=True`` the run goes on and every cell's outcome is in ``result.cells``.
  Cells tagged ``raises-exception`` may raise without failing the run (a notebook demonstrating an
  error on purpose).
- ``cell_timeout`` (seconds) interrupts a cell that runs too long and moves on to the next cell
  (the kernel keeps its state); ``total_timeout`` caps the whole run. A kernel that dies
  (``os._exit``, a segfault, out of memory) ends the run with a clear message; the cells after it are
  reported as not run.
- A file that is not a valid notebook raises `MalformedNotebook` naming the file and the fix.
- ``extra_cells_after``: code run silently in the kernel after each code cell (a string, or a
  callable ``(CellRun) -> str | None``). The grader uses it to record answers cell by cell. It does
  not appear in the notebook, its history or its outputs.
- The executed notebook (outputs included, also when the run failed part-way) is written to
  ``out_path`` if given.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Callable, Mapping


def _import_nbformat_quickly() -> None:
    """Import nbformat without jsonschema's optional ``rfc3987_syntax``, which compiles a Lark grammar on import
    (~1 s of CPU in every process that reads a notebook: each lab-10 sandbox process reads the solution
    notebook for its helpers). It only backs jsonschema's "iri"/"iri-reference" format checks, which no
    nbformat schema uses (they name no format at all), so notebooks are validated exactly as before; a
    process that imported jsonschema already keeps what it has."""
    if "jsonschema" in sys.modules or "rfc3987_syntax" in sys.modules:
        return
    sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # its import fails: jsonschema skips it
    try:
        import nbformat  # noqa: F401
    finally:
        if sys.modules.get("rfc3987_syntax", 0) is None:
            del sys.modules["rfc3987_syntax"]  # a later `import rfc3987_syntax` of anyone else's works


_import_nbformat_quickly()

import nbformat  # noqa: E402
import nbformat.reader  # noqa: E402
from nbformat import NotebookNode  # noqa: E402

__all__ = [
    "execute",
    "read_notebook",
    "ExecutionResult",
    "CellRun",
    "NotebookError",
    "MalformedNotebook",
]

# The error name nbclient reports in place of the kernel's reply when a cell hits its time limit;
# lets us tell "timed out" apart from a KeyboardInterrupt the learner raised themselves.
_TIMEOUT_ENAME = "PerflabCellTimeout"

# After a timeout the kernel is interrupted; a kernel that has not answered a trivial request
# within this many seconds ignored the interrupt (e.g. a bare `except:` around the loop).
_RESPONSIVE_WITHIN_S = 10

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_CELL_LINE = re.compile(r"Cell In\[\d*\], line (\d+)")
# labgen's markers say nothing about a cell; its first line of code does.
_SOLUTION_MARKER = re.compile(r"^\s*#\s*(BEGIN|END)\s+(SOLUTION|STARTER)\s*$")


class NotebookError(Exception):
    """A notebook could not be run to the end. ``.result`` holds what ran (None if nothing did)."""

    def __init__(self, message: str, result: "ExecutionResult | None" = None):
        super().__init__(message)
        self.result = result


class MalformedNotebook(NotebookError):
    """The file is missing, not JSON, or not a valid Jupyter notebook."""


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _first_line(source: str, width: int = 60) -> str:
    for line in source.splitlines():
        if line.strip() and not _SOLUTION_MARKER.match(line):
            line = line.strip()
            return line if len(line) <= width else line[: width - 1] + "…"
    return ""


def _shorten(text: str, limit: int = 400) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class CellRun:
    """What happened to one code cell.

    ``status``: ``"ok"``, ``"error"`` (it raised), ``"timeout"`` (interrupted at its time limit),
    ``"kernel_died"`` (the kernel process died while running it) or ``"not_run"`` (the run had
    stopped before it; ``reason`` says why).
    """

    index: int  # position among all cells, from 0 (nbformat's index)
    source: str
    status: str = "ok"
    seconds: float = 0.0
    ename: str | None = None
    evalue: str | None = None
    line: int | None = None  # line within the cell where the error surfaced, from 1
    timeout_s: float | None = None
    total_limit_hit: bool = False
    expected_error: bool = False  # tagged raises-exception: an error here is part of the lesson
    reason: str | None = None

    @property
    def number(self) -> int:
        """Position counting from 1, markdown cells included — what a reader counts scrolling down."""
        return self.index + 1

    @property
    def first_line(self) -> str:
        return _first_line(self.source)

    @property
    def label(self) -> str:
        first = self.first_line
        return f"cell {self.number} (`{first}`)" if first else f"cell {self.number}"

    @property
    def failed(self) -> bool:
        if self.status == "error":
            return not self.expected_error
        return self.status in ("timeout", "kernel_died", "not_run")

    def describe(self) -> str:
        """One line saying what went wrong with this cell (or that it ran fine)."""
        if self.status == "ok":
            return f"{self.label} ran in {self.seconds:.1f} s"
        if self.status == "error":
            where = f" (line {self.line})" if self.line else ""
            return f"{self.label} raised {self.ename}: {_shorten(self.evalue or '')}{where}"
        if self.status == "timeout":
            if self.total_limit_hit:
                return f"{self.label} was stopped when the notebook's total time limit ran out"
            return f"{self.label} timed out after {self.timeout_s:g} s (infinite loop?)"
        if self.status == "kernel_died":
            return (
                f"the kernel died while running {self.label} — the Python process exited "
                "(os._exit, a crash in a C extension, or out of memory)"
            )
        return f"{self.label} never ran: {self.reason}"


@dataclass
class ExecutionResult:
    """The outcome of `execute`: the executed notebook and every code cell's `CellRun`."""

    path: Path
    notebook: NotebookNode
    cells: list[CellRun]
    seconds: float
    out_path: Path | None = None
    stopped: str | None = None  # why the run ended before the last cell, if it did
    hidden_errors: list[str] = field(default_factory=list)  # extra_cells_after code that raised

    @property
    def failures(self) -> list[CellRun]:
        return [c for c in self.cells if c.failed and c.status != "not_run"]

    @property
    def ok(self) -> bool:
        return not any(c.failed for c in self.cells)

    @property
    def first_failure(self) -> CellRun | None:
        failures = self.failures
        return failures[0] if failures else None

    @property
    def kernel_died(self) -> bool:
        return any(c.status == "kernel_died" for c in self.cells)

    @property
    def durations(self) -> dict[int, float]:
        """Seconds per code cell, keyed by cell index (from 0)."""
        return {c.index: c.seconds for c in self.cells}

    def cell(self, index: int) -> CellRun | None:
        for run in self.cells:
            if run.index == index:
                return run
        return None

    def summary(self) -> str:
        """'ok' or the first failure, prefixed with the notebook's path."""
        failure = self.first_failure
        if failure is None:
            if self.stopped:
                return f"{self.path}: {self.stopped}"
            return f"{self.path}: ok ({len(self.cells)} code cells, {self.seconds:.1f} s)"
        return f"{self.path}: {failure.describe()}"


_RESTORE_HINT = (
    "Fix: the file is damaged (a bad merge, a hand edit, or a save cut short). Restore a good copy "
    "(`git restore <file>`, or a fresh copy of the lab from labs/) and redo your changes in "
    "JupyterLab, which always writes valid notebooks."
)


def read_notebook(path: str | os.PathLike) -> NotebookNode:
    """Read and validate a notebook (as nbformat v4), or raise `MalformedNotebook` saying why."""
    path = Path(path)
    if not path.is_file():
        raise MalformedNotebook(f"{path}: no such notebook file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedNotebook(f"{path} is not a notebook: it is not UTF-8 text ({exc}). {_RESTORE_HINT}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedNotebook(
            f"{path} is not a valid notebook: its JSON is broken at line {exc.lineno}, "
            f"column {exc.colno} ({exc.msg}). {_RESTORE_HINT}"
        ) from None
    if not isinstance(data, dict) or "cells" not in data and "worksheets" not in data:
        raise MalformedNotebook(f"{path} is JSON but not a Jupyter notebook (no cells). {_RESTORE_HINT}")
    try:
        # reader.reads (not from_dict) joins multi-line sources and drops transient fields.
        nb = nbformat.convert(nbformat.reader.reads(text), 4)
    except Exception as exc:  # nbformat raises several unrelated types for a bad header
        raise MalformedNotebook(
            f"{path} is not a valid notebook: {type(exc).__name__}: {_shorten(str(exc), 200)}. {_RESTORE_HINT}"
        ) from None
    with warnings.catch_warnings():
        # Missing cell ids only warn in nbformat 5.x; they are harmless for executing.
        warnings.simplefilter("ignore")
        try:
            nbformat.validate(nb)
        except nbformat.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "top level"
            message = _shorten(exc.message.splitlines()[0], 200)
            raise MalformedNotebook(
                f"{path} is not a valid notebook: at {where}: {message}. {_RESTORE_HINT}"
            ) from None
    return nb


def _capped_client(limit: int):
    """A NotebookClient that keeps at most ``limit`` bytes of outputs over the whole run (then one note)."""
    from nbclient import NotebookClient

    class CappedClient(NotebookClient):
        kept = 0
        noted = False

        def output(self, outs, msg, display_id, cell_index):
            size = len(json.dumps(msg.get("content", {}), default=str))
            if self.kept + size > limit:
                if not self.noted:
                    self.noted = True
                    outs.append(nbformat.v4.new_output(
                        "stream", name="stderr",
                        text=f"[perflab: output cut here: more than {limit:,} bytes were printed]\n"))
                return None
            self.kept += size
            return super().output(outs, msg, display_id, cell_index)

    return CappedClient


def _interpreter_kernel_specs(wrap: Callable[[list[str]], list[str]] | None = None):
    """A KernelSpecManager whose ``python3`` is this interpreter running ipykernel (``wrap`` may prefix
    the command, e.g. the grader's jail).

    A ``python3`` kernelspec installed in the user's home or system-wide (say, for another Python)
    would otherwise win, and the notebook would run without this venv's packages.
    """
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class InterpreterKernelSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
            if kernel_name in ("python3", "python"):
                return KernelSpec(
                    name="python3",
                    argv=(wrap or list)([sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]),
                    display_name=f"Python {sys.version_info.major}.{sys.version_info.minor} ({sys.executable})",
                    language="python",
                    interrupt_mode="signal",
                    # Lets jupyter_client give the kernel CurveZMQ keys, as ipykernel's own spec does.
                    metadata={"debugger": False, "supported_encryption": ["curve"]},
                )
            return super().get_kernel_spec(kernel_name)

    return InterpreterKernelSpecs()


def execute(
    path: str | os.PathLike,
    *,
    out_path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    cell_timeout: float | None = 600,
    total_timeout: float | None = None,
    cwd: str | os.PathLike | None = None,
    allow_errors: bool = False,
    kernel_name: str = "python3",
    extra_cells_after: str | Callable[[CellRun], str | None] | None = None,
    kernel_wrap: Callable[[list[str]], list[str]] | None = None,
    inherit_env: bool = True,
    output_limit: int | None = None,
) -> ExecutionResult:
    """Run every code cell of the notebook at ``path`` in a fresh kernel; see the module docstring.

    ``cwd`` defaults to the notebook's folder. Raises `MalformedNotebook` for a bad file and, unless
    ``allow_errors``, `NotebookError` at the first failing cell (after writing ``out_path``).
    """
    from jupyter_core.utils import run_sync

    path = Path(path)
    nb = read_notebook(path)
    runner = _Runner(
        path=path,
        nb=nb,
        env=env,
        cell_timeout=cell_timeout,
        total_timeout=total_timeout,
        cwd=Path(cwd) if cwd is not None else path.resolve().parent,
        allow_errors=allow_errors,
        kernel_name=kernel_name,
        extra_cells_after=extra_cells_after,
        kernel_wrap=kernel_wrap,
        inherit_env=inherit_env,
        output_limit=output_limit,
    )
    result = run_sync(runner.run)()
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(result.notebook, out_path)
        result.out_path = out_path
    if not allow_errors and not result.ok:
        failure = result.first_failure
        detail = failure.describe() if failure else result.stopped
        raise NotebookError(f"{path}: {detail}", result)
    return result


# nbclient logs timeouts and dead kernels at ERROR level; CellRun.describe() reports them better.
_QUIET_LOG = logging.getLogger("perflab.notebooks.kernel")
_QUIET_LOG.setLevel(logging.CRITICAL)


class _KernelUnresponsive(Exception):
    pass


@dataclass
class _Runner:
    path: Path
    nb: NotebookNode
    env: Mapping[str, str] | None
    cell_timeout: float | None
    total_timeout: float | None
    cwd: Path
    allow_errors: bool
    kernel_name: str
    kernel_wrap: Callable[[list[str]], list[str]] | None
    inherit_env: bool
    output_limit: int | None
    extra_cells_after: str | Callable[[CellRun], str | None] | None

    async def run(self) -> ExecutionResult:
        from jupyter_client.manager import AsyncKernelManager
        from nbclient import NotebookClient
        from nbclient.exceptions import DeadKernelError
        import zmq

        started = time.monotonic()
        deadline = started + self.total_timeout if self.total_timeout else None
        kernel_env = {**(os.environ if self.inherit_env else {}), **{k: str(v) for k, v in (self.env or {}).items()}}
        # Python 3.11's frozen modules make the kernel's debugger print a warning into every run.
        kernel_env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

        km = AsyncKernelManager(
            log=_QUIET_LOG,
            kernel_name=self.kernel_name,
            kernel_spec_manager=_interpreter_kernel_specs(self.kernel_wrap),
            # Encrypt the local TCP link when pyzmq can (else the kernel logs a warning into every run).
            transport_encryption="auto" if zmq.has("curve") else "disabled",
        )
        client = (_capped_client(self.output_limit) if self.output_limit else NotebookClient)(
            self.nb,
            km=km,
            log=_QUIET_LOG,
            timeout=None,
            interrupt_on_timeout=True,
            # Report a timeout at once instead of waiting for the interrupted kernel's reply.
            error_on_timeout={"ename": _TIMEOUT_ENAME, "evalue": "cell timed out", "traceback": []},
            allow_errors=True,  # we judge errors ourselves, cell by cell
            shutdown_kernel="immediate",
            record_timing=False,
        )
        replies: list[dict] = []
        client.on_cell_executed = lambda cell, cell_index, execute_reply: replies.append(execute_reply)

        runs: list[CellRun] = []
        hidden_errors: list[str] = []
        stopped: str | None = None
        execution_count = 0
        kernel_started = False
        try:
            async with client.async_setup_kernel(env=kernel_env, cwd=str(self.cwd), cleanup_kc=True):
                kernel_started = True
                for index, cell in enumerate(self.nb.cells):
                    if cell.cell_type != "code":
                        continue
                    run = CellRun(
                        index=index,
                        source=cell.source,
                        expected_error="raises-exception" in cell.metadata.get("tags", []),
                    )
                    runs.append(run)
                    if stopped:
                        run.status, run.reason = "not_run", stopped
                        continue
                    if not cell.source.strip():
                        continue
                    remaining = deadline - time.monotonic() if deadline else None
                    if remaining is not None and remaining <= 0:
                        stopped = f"the notebook's total time limit ({self.total_timeout:g} s) ran out"
                        run.status, run.reason = "not_run", stopped
                        continue
                    limit = self.cell_timeout
                    if remaining is not None and (limit is None or remaining < limit):
                        limit, run.total_limit_hit = remaining, True
                    client.timeout = max(1, math.ceil(limit)) if limit else None
                    run.timeout_s = self.cell_timeout

                    execution_count += 1
                    replies.clear()
                    cell_started = time.monotonic()
                    try:
                        await client.async_execute_cell(cell, index, execution_count=execution_count)
                    except DeadKernelError:
                        run.status = "kernel_died"
                    run.seconds = time.monotonic() - cell_started
                    self._judge(run, cell, replies[-1] if replies else None)
                    if run.status != "timeout":
                        run.total_limit_hit = False
                    if run.status == "kernel_died":
                        stopped = f"the kernel had died while running {run.label}"
                        continue
                    if run.failed and not self.allow_errors:
                        stopped = f"{run.label} failed"
                        break
                    if run.status == "timeout" and run.total_limit_hit:
                        stopped = f"the notebook's total time limit ({self.total_timeout:g} s) ran out"
                        continue
                    try:
                        await self._after_cell(client, run, hidden_errors)
                    except DeadKernelError:
                        stopped = f"the kernel died right after {run.label}"
                    except _KernelUnresponsive:
                        stopped = (
                            f"the kernel stopped responding after {run.label} was interrupted "
                            "(code that swallows KeyboardInterrupt, e.g. a bare `except:` in a loop?)"
                        )
        except DeadKernelError:
            stopped = stopped or "the kernel died"
        except Exception as exc:
            if kernel_started:
                raise
            raise NotebookError(
                f"{self.path}: could not start a Python kernel ({sys.executable} -m ipykernel_launcher): "
                f"{type(exc).__name__}: {exc}. Is ipykernel installed in this environment?"
            ) from exc
        # Cells after an early stop that the loop never reached (allow_errors=False) are listed too.
        seen = {r.index for r in runs}
        for index, cell in enumerate(self.nb.cells):
            if cell.cell_type == "code" and index not in seen:
                runs.append(CellRun(index=index, source=cell.source, status="not_run", reason=stopped))
        runs.sort(key=lambda r: r.index)
        return ExecutionResult(
            path=self.path,
            notebook=self.nb,
            cells=runs,
            seconds=time.monotonic() - started,
            stopped=stopped,
            hidden_errors=hidden_errors,
        )

    def _judge(self, run: CellRun, cell: NotebookNode, reply: dict | None) -> None:
        if run.status == "kernel_died":
            cell.outputs = list(cell.get("outputs", [])) + [
                nbformat.v4.new_output("error", ename="DeadKernelError", evalue=run.describe(), traceback=[])
            ]
            return
        content = (reply or {}).get("content", {})
        if content.get("status") != "error":
            run.status = "ok"
            return
        if content.get("ename") == _TIMEOUT_ENAME:
            run.status = "timeout"
            cell.outputs = list(cell.get("outputs", [])) + [
                nbformat.v4.new_output("error", ename="TimeoutError", evalue=run.describe(), traceback=[])
            ]
            return
        run.status = "error"
        run.ename = content.get("ename") or "Error"
        run.evalue = _strip_ansi(content.get("evalue") or "")
        traceback = _strip_ansi("\n".join(content.get("traceback") or []))
        match = _CELL_LINE.search(traceback)
        if match:
            # IPython drops a cell's leading blank lines before numbering; count them back in.
            lines = cell.source.splitlines()
            blank = next((i for i, line in enumerate(lines) if line.strip()), 0)
            run.line = int(match.group(1)) + blank

    async def _after_cell(self, client, run: CellRun, hidden_errors: list[str]) -> None:
        code = self.extra_cells_after(run) if callable(self.extra_cells_after) else self.extra_cells_after
        if code:
            error = await _run_hidden(client, code, _RESPONSIVE_WITHIN_S)
            if error:
                hidden_errors.append(f"after {run.label}: {error}")
        elif run.status == "timeout":
            # Make sure the interrupt took before sending the next cell to a kernel still busy.
            await _run_hidden(client, "pass", _RESPONSIVE_WITHIN_S)


async def _run_hidden(client, code: str, timeout: float) -> str | None:
    """Run ``code`` silently (no outputs, history or execution count); return its error or None."""
    from jupyter_core.utils import ensure_async
    from nbclient.exceptions import DeadKernelError

    kc = client.kc
    msg_id = await ensure_async(
        kc.execute(code, silent=True, store_history=False, allow_stdin=False, stop_on_error=False)
    )
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _KernelUnresponsive()
        try:
            msg = await ensure_async(kc.shell_channel.get_msg(timeout=min(1.0, remaining)))
        except Empty:
            if not await ensure_async(kc.is_alive()):
                raise DeadKernelError("Kernel died") from None
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue  # e.g. the late reply of a cell interrupted after its timeout
        content = msg["content"]
        if content.get("status") == "ok":
            return None
        return f"{content.get('ename')}: {_shorten(_strip_ansi(content.get('evalue') or ''), 300)}"
