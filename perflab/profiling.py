"""Profiling, read for you: cProfile tables and charts, a line profile, a py-spy flame graph.

    from perflab import profiling

    prof = profiling.profile(build_report, conn)      # cProfile, one call; prof.result is its answer
    prof.table(sort="cumulative", limit=10)           # DataFrame: calls, own time, cumulative time, share
    prof.callers("execute")                           # who called it, how often, with how much time
    prof.top(among=["load_orders", "customer_name"])  # the name with the largest cumulative time
    prof.plot(save="10_profile")                      # own vs cumulative time per function, as bars
    profiling.line_profile(build_report, conn)        # line_profiler: time per line of one function
    profiling.flame_graph(build_report, conn)         # py-spy attached to this very process: an SVG

**Own time vs cumulative time.** cProfile records, for every function, its *own* time (``tottime``:
spent in its own lines, not in functions it called) and its *cumulative* time (``cumtime``: own time
plus everything it called). Sort by cumulative to find which part of the program the time goes
*through* (the report, then the loop helper, then the query); sort by own time to find where it is
finally *spent* (often a driver's socket read). Callers answer "who calls this 2,000 times?".

cProfile is deterministic (it hooks every call and return), so calls are counted exactly, but its
hook costs ~0.1-1 µs per call: code that makes millions of tiny calls looks slower under it than it
is. A sampling profiler (py-spy) instead looks at the stack ~100-1000 times a second from another
process: near-zero overhead, approximate shares, no call counts.
"""
from __future__ import annotations

import cProfile
import html
import io
import os
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perflab import paths

__all__ = ["Profile", "profile", "line_profile", "memory_by_line", "flame_graph", "FlameGraph", "function_label",
           "py_spy_path"]


def function_label(key: tuple[str, int, str]) -> str:
    """A readable name for a pstats key ``(file, line, function)``."""
    filename, line, name = key
    if filename == "~":                     # a built-in: pstats names it "<built-in method ...>"
        return name
    base = os.path.basename(filename)
    if "ipykernel" in filename or base.startswith("<"):
        return name                         # defined in the notebook itself
    return f"{name} ({base}:{line})"


@dataclass
class Profile:
    """One profiled call: ``.result`` is what it returned, ``.stats`` the ``pstats.Stats``."""

    stats: pstats.Stats
    result: Any = field(default=None, repr=False)
    wall_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        """Total time cProfile attributed (its own overhead included)."""
        return self.stats.total_tt

    def _rows(self):
        for key, (primitive, calls, own, cumulative, callers) in self.stats.stats.items():
            yield key, primitive, calls, own, cumulative, callers

    def table(self, sort: str = "cumulative", limit: int | None = 12, match: str | None = None):
        """One row per function: calls, own and cumulative seconds, per-call ms, share of the total.

        ``sort``: "cumulative" (``cumtime``) or "own" (``tottime``); ``match``: keep functions whose
        label contains this text.
        """
        import pandas as pd

        total = self.total_seconds or 1.0
        rows = []
        for key, primitive, calls, own, cumulative, _ in self._rows():
            label = function_label(key)
            if match and match not in label:
                continue
            rows.append({"function": label, "calls": calls, "own s": own, "cumulative s": cumulative,
                         "own ms per call": own / calls * 1e3 if calls else 0.0,
                         "cumulative share": cumulative / total})
        column = {"cumulative": "cumulative s", "cumtime": "cumulative s", "own": "own s", "tottime": "own s"}[sort]
        frame = pd.DataFrame(rows).sort_values([column, "calls"], ascending=False).reset_index(drop=True)
        return frame.head(limit) if limit else frame

    def seconds_of(self, name: str) -> tuple[float, float, int]:
        """(own, cumulative, calls) summed over every function called ``name``."""
        own = cumulative = 0.0
        calls = 0
        for key, _, n, tt, ct, _ in self._rows():
            if key[2] == name:
                own, cumulative, calls = own + tt, cumulative + ct, calls + n
        return own, cumulative, calls

    def top(self, among: Iterable[str], by: str = "cumulative") -> str:
        """Of the functions named in ``among``, the one with the most cumulative (or own) time."""
        index = 1 if by == "cumulative" else 0
        names = list(among)
        return max(names, key=lambda name: self.seconds_of(name)[index])

    def ranking(self, among: Iterable[str], by: str = "cumulative") -> list[tuple[str, float]]:
        """``[(name, seconds), ...]`` for the functions named in ``among``, largest first."""
        index = 1 if by == "cumulative" else 0
        return sorted(((name, self.seconds_of(name)[index]) for name in among), key=lambda item: -item[1])

    def callers(self, name: str):
        """Who called the functions named ``name``: calls and the time spent in it on their behalf."""
        import pandas as pd

        rows = []
        for key, _, _, _, _, callers in self._rows():
            if key[2] != name:
                continue
            for caller, values in callers.items():
                primitive, calls, own, cumulative = values if isinstance(values, tuple) else (values, values, 0, 0)
                rows.append({"function": function_label(key), "called by": function_label(caller), "calls": calls,
                             "own s": own, "cumulative s": cumulative})
        return pd.DataFrame(rows, columns=["function", "called by", "calls", "own s", "cumulative s"]).sort_values(
            "cumulative s", ascending=False).reset_index(drop=True)

    def text(self, sort: str = "cumulative", limit: int = 12) -> str:
        """pstats' own printout (what ``print_stats`` shows)."""
        stream, previous = io.StringIO(), self.stats.stream
        self.stats.stream = stream
        try:
            self.stats.sort_stats(sort).print_stats(limit)
        finally:
            self.stats.stream = previous
        return stream.getvalue()

    def plot(self, limit: int = 10, match: str | None = None, ax=None, title: str | None = None,
             save: str | bool | None = None):
        """Bars of own and cumulative time for the top functions by cumulative time."""
        from perflab import plots

        return plots.profile_bars(self.table("cumulative", limit=limit, match=match), ax=ax, title=title,
                                  save=save, total=self.total_seconds)

    def to_dict(self, limit: int = 15) -> dict:
        table = self.table("cumulative", limit=limit)
        below_entry = table.iloc[1] if len(table) > 1 else table.iloc[0]
        headline = (f"{self.wall_seconds * 1e3:,.1f} ms under cProfile; below the entry point, "
                    f"{below_entry['function']} has {below_entry['cumulative share']:.0%} of the time "
                    f"({below_entry['calls']:,} calls)")
        return {"kind": "profile", "headline": headline, "total_seconds": self.total_seconds,
                "wall_seconds": self.wall_seconds, "functions": table.to_dict(orient="records")}


def profile(fn: Callable, *args: Any, **kwargs: Any) -> Profile:
    """Run ``fn(*args, **kwargs)`` once under cProfile."""
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    try:
        result = fn(*args, **kwargs)
    finally:
        profiler.disable()
    wall = time.perf_counter() - started
    return Profile(pstats.Stats(profiler), result, wall)


# --------------------------------------------------------------------------------------------------
# line_profiler
# --------------------------------------------------------------------------------------------------

def line_profile(function: Callable, *args: Any, entry: Callable | None = None, unit_ms: bool = True,
                 **kwargs: Any) -> str:
    """Time every line of ``function`` while ``entry(*args)`` (default: ``function`` itself) runs.

    Returns line_profiler's table (hits, time, per hit, % time, line contents) as text.
    """
    from line_profiler import LineProfiler

    profiler = LineProfiler(function)
    profiler.runcall(entry or function, *args, **kwargs)
    stream = io.StringIO()
    profiler.print_stats(stream=stream, output_unit=1e-3 if unit_ms else None, stripzeros=True)
    return stream.getvalue()


# --------------------------------------------------------------------------------------------------
# py-spy: a sampling profiler in another process, attached to this one
# --------------------------------------------------------------------------------------------------

PTRACE_HELP = (
    "py-spy reads another process's memory, which Linux allows only with the right to ptrace it. "
    "Inside a container that usually means starting it with `docker run --cap-add SYS_PTRACE ...` "
    "(Kubernetes: securityContext.capabilities.add: [SYS_PTRACE]); on a host with Yama "
    "(/proc/sys/kernel/yama/ptrace_scope = 1) attaching to a process that is not your child needs "
    "root or `sudo sysctl kernel.yama.ptrace_scope=0`. Alternatively let py-spy start the program "
    "itself: `py-spy record -o profile.svg -- python your_script.py`."
)


def py_spy_path() -> str | None:
    """The py-spy executable: next to this Python (the venv), else on PATH."""
    candidate = Path(sys.executable).with_name("py-spy")
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


@dataclass
class FlameGraph:
    """A py-spy flame graph (``svg`` path), or why there is none (``problem``)."""

    svg: Path | None
    problem: str | None = None
    samples_command: str = ""
    calls: int = 0

    @property
    def ok(self) -> bool:
        return self.svg is not None and self.problem is None

    def _repr_html_(self) -> str:
        if not self.ok:
            return (f"<div style='border-left:4px solid #D55E00;padding:6px 10px'><b>No flame graph:</b> "
                    f"{html.escape(self.problem or '')}</div>")
        svg = self.svg.read_text(encoding="utf-8", errors="replace")
        # py-spy's SVG is interactive (JavaScript) in a browser; in a notebook it renders as a picture.
        return (f"<div style='max-width:100%;overflow:auto'>{svg}</div>"
                f"<p style='color:#666'>py-spy flame graph, {self.calls} calls sampled: {html.escape(str(self.svg))}</p>")

    def __repr__(self) -> str:
        return f"FlameGraph({self.svg})" if self.ok else f"No flame graph: {self.problem}"


def flame_graph(fn: Callable, *args: Any, seconds: float = 2.0, rate: int = 250, name: str = "flame-graph",
                idle: bool = False, attach_timeout: float = 10.0, **kwargs: Any) -> FlameGraph:
    """Attach py-spy to *this* process, call ``fn`` repeatedly for ``seconds``, return the flame graph.

    This is the article's "attach to a running process without restarting it" (``py-spy record
    --pid``), pointed at the notebook's own kernel. When py-spy is missing or may not attach (see
    ``PTRACE_HELP``) the result says so instead of raising. py-spy leaves out samples in which the
    thread is idle — blocked in a system call such as waiting for the database's answer — unless
    ``idle=True`` (``--idle``): for I/O-bound code, pass it, or the waiting will not show.
    """
    executable = py_spy_path()
    if executable is None:
        return FlameGraph(None, "py-spy is not installed (pip install py-spy).")
    out = Path(paths.FIGURES_DIR) / f"{name}.svg"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    command = [executable, "record", "--pid", str(os.getpid()), "--output", str(out), "--format", "flamegraph",
               "--rate", str(rate), "--duration", str(max(1, round(seconds)))] + (["--idle"] if idle else [])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # py-spy says "Sampling process ..." once attached; give it a moment rather than parse its output.
    time.sleep(0.5)
    calls = 0
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        fn(*args, **kwargs)
        calls += 1
    try:
        output, _ = process.communicate(timeout=attach_timeout + seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return FlameGraph(None, f"py-spy did not finish within {attach_timeout + seconds:.0f} s.", " ".join(command))
    if process.returncode != 0 or not out.exists():
        lines = [line for line in (output or "").splitlines() if line.strip()]
        detail = lines[-1] if lines else f"exit code {process.returncode}"
        hint = PTRACE_HELP if ("ermission" in (output or "") or "ptrace" in (output or "").lower()) else ""
        return FlameGraph(None, f"py-spy could not record this process ({detail}). {hint}".strip(), " ".join(command))
    return FlameGraph(out, None, " ".join(command), calls)


# --------------------------------------------------------------------------------------------------
# memory-profiler, line by line
# --------------------------------------------------------------------------------------------------

def memory_by_line(fn: Callable, *args: Any, **kwargs: Any) -> str:
    """memory-profiler's line-by-line table (RSS after each line, its increment) for one call of ``fn``.

    memory-profiler reads the function's source from its file, and a function defined in a notebook
    cell has none on disk; so the source is written to ``build/profiles/<name>.py`` and compiled from
    there, with the function's own globals, before it is profiled.
    """
    import inspect
    import textwrap

    from memory_profiler import LineProfiler, show_results

    source = textwrap.dedent(inspect.getsource(fn))
    folder = Path(paths.BUILD_DIR) / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{fn.__name__}.py"
    path.write_text(source, encoding="utf-8")
    scope = dict(fn.__globals__)
    exec(compile(source, str(path), "exec"), scope)
    profiler = LineProfiler()
    profiler(scope[fn.__name__])(*args, **kwargs)
    stream = io.StringIO()
    show_results(profiler, stream=stream)
    return stream.getvalue().replace(f"Filename: {path}\n\n", f"Function: {fn.__name__}\n\n")
