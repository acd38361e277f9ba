"""Peak memory, measured rather than guessed: how much a call allocated at its worst moment.

    from perflab import memory

    m = memory.peak(load_everything, conn)        # MemoryPeak(peak_bytes=..., retained_bytes=..., result=...)
    str(m)                                         # "peak 48.2 MB, still held after the call 45.1 MB"
    table = memory.compare_peaks({"list of rows": load_all, "stream": stream_rows}, args=(conn,))
    table                                          # one row per variant, and "stream: 38x less memory"
    table.plot(save="09_memory")                   # bars in the course style

What is measured: ``tracemalloc`` (standard library) traces every allocation made through Python's
allocators — every object, list, dict, string. Its *peak* is the most memory those allocations held
at once during the call, above what was held when it started. That is deterministic (the same code
and data give the same number on every machine, give or take a few kB) and measures exactly what a
rewrite from "a list of a million rows" to "a stream" changes.

What it does **not** see: memory a C library allocates with its own ``malloc`` — e.g. libpq holding a
whole query result before psycopg turns rows into Python objects — and memory the process keeps
after freeing it. ``memory_profiler`` (process RSS) sees those; lessons show both where it matters.

Tracing slows Python's allocations down (roughly 2x-5x), so never time code while tracing it.
"""
from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from perflab import progress
from perflab.results import ResultMixin, attach_figure
from perflab.units import format_bytes, format_factor

__all__ = ["MemoryPeak", "MemoryComparison", "peak", "compare_peaks", "format_bytes", "frozen_heap"]


@dataclass(frozen=True)
class MemoryPeak:
    """The memory one call allocated: its peak, and what it still held when it returned."""

    label: str
    peak_bytes: int
    retained_bytes: int  # still allocated when the call returned (usually: its result)
    result: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return (f"{self.label}: peak {format_bytes(self.peak_bytes)}, "
                f"still held after the call {format_bytes(self.retained_bytes)}")

    def to_dict(self) -> dict:
        return {"label": self.label, "peak_bytes": self.peak_bytes, "retained_bytes": self.retained_bytes,
                "peak": format_bytes(self.peak_bytes)}


def peak(fn: Callable, *args: Any, label: str | None = None, keep_result: bool = True, **kwargs: Any) -> MemoryPeak:
    """Call ``fn(*args, **kwargs)`` once under tracemalloc; return its peak allocation above the start.

    Works whether or not tracemalloc is already tracing (the peak is reset for the call, and tracing
    is stopped afterwards only if this function started it). ``gc.collect()`` runs first so garbage
    left by earlier code is not counted as the call's.
    """
    label = label or _label(fn)
    started_here = not tracemalloc.is_tracing()
    gc.collect()
    if started_here:
        tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = fn(*args, **kwargs)
        current, top = tracemalloc.get_traced_memory()
    finally:
        if started_here:
            tracemalloc.stop()
    return MemoryPeak(label, max(0, top - baseline), max(0, current - baseline), result if keep_result else None)


def _label(fn: Callable) -> str:
    from perflab.harness import normalise_variants

    return next(iter(normalise_variants([fn])))


@dataclass(frozen=True)
class MemoryComparison(ResultMixin):
    """Peaks of several variants doing the same job; the first one is the baseline."""

    peaks: tuple[MemoryPeak, ...]

    @property
    def baseline(self) -> MemoryPeak:
        return self.peaks[0]

    def peak_of(self, label: str) -> int:
        for measured in self.peaks:
            if measured.label == label:
                return measured.peak_bytes
        raise KeyError(f"no variant {label!r}; variants are {[p.label for p in self.peaks]}")

    def ratio(self, label: str | None = None) -> float:
        """How many times less memory ``label`` (default: the smallest other) peaked at than the baseline."""
        others = [p for p in self.peaks[1:] if label is None or p.label == label]
        if not others:
            raise KeyError(f"no variant {label!r}")
        best = min(others, key=lambda p: p.peak_bytes)
        return self.baseline.peak_bytes / max(best.peak_bytes, 1)

    @property
    def headline(self) -> str:
        if len(self.peaks) < 2:
            return str(self.baseline)
        best = min(self.peaks[1:], key=lambda p: p.peak_bytes)
        factor = self.baseline.peak_bytes / max(best.peak_bytes, 1)
        return (f"{best.label}: {format_factor(factor)}x less memory at peak than {self.baseline.label} "
                f"({format_bytes(best.peak_bytes)} vs {format_bytes(self.baseline.peak_bytes)})")

    @property
    def table(self):
        import pandas as pd

        base = max(self.baseline.peak_bytes, 1)
        return pd.DataFrame([{"variant": p.label, "peak": format_bytes(p.peak_bytes),
                              "held after": format_bytes(p.retained_bytes), "peak_bytes": p.peak_bytes,
                              "vs baseline": f"{p.peak_bytes / base:.3f}x"} for p in self.peaks]).set_index("variant")

    kind = "memory"

    def tidy(self):
        """The result protocol's table: one row per variant (peak and held bytes)."""
        import pandas as pd

        return pd.DataFrame([{"variant": p.label, "peak_bytes": p.peak_bytes, "held_bytes": p.retained_bytes,
                              "peak": format_bytes(p.peak_bytes)} for p in self.peaks])

    def plot(self, ax=None, title: str | None = None, save: str | bool | None = None):
        from perflab import plots

        figure = plots.memory_bars(self, ax=ax, title=title, save=save)
        attach_figure(self, figure)
        return figure

    def _details(self) -> dict:
        return {"measured_with": "tracemalloc", "baseline": self.baseline.label,
                "peaks": [p.to_dict() for p in self.peaks]}

    def _repr_html_(self) -> str:
        return f"<p><b>{self.headline}</b></p>" + self.table.drop(columns="peak_bytes").to_html()

    def __repr__(self) -> str:
        return self.headline + "\n" + self.table.drop(columns="peak_bytes").to_string()


def compare_peaks(variants: Mapping[str, Callable] | list[Callable], args: tuple = (), kwargs: dict | None = None,
                  *, equal: Callable[[Any, Any], bool] | None = None, check: bool = True) -> MemoryComparison:
    """Peak memory of each variant (one call each, traced); answers checked equal to the first's.

    Variants and answers are handled as the harness does: labels from ``harness.normalise_variants``,
    and the answers of the traced calls compared with ``harness.check_answers`` (an
    ``AnswerMismatch`` naming both variants: memory saved by a wrong answer is not a saving). Each
    answer is dropped before the next variant runs unless ``check`` needs it.
    """
    from perflab.harness import check_answers, normalise_variants

    items = list(normalise_variants(variants).items())
    peaks, answers = [], {}
    with progress.track(len(items), unit="variants", what="peak memory") as tracker:
        for index, (label, fn) in enumerate(items):
            tracker.update(index, detail=repr(label))
            measured = peak(fn, *args, label=label, **(kwargs or {}))
            if check:
                answers[label] = measured.result
                check_answers(answers, equal)   # a mismatch stops before the next variant runs
                if len(answers) > 1:
                    answers.pop(label)
            peaks.append(MemoryPeak(label, measured.peak_bytes, measured.retained_bytes))
            tracker.update(index + 1)
    return MemoryComparison(tuple(peaks))


class frozen_heap:
    """Hide the objects alive now from the garbage collector, so that ``gc.collect()`` is cheap.

    The harness runs ``gc.collect()`` before every sample, so one variant's garbage is not collected
    on another's clock. A full collection walks every container object alive: in a kernel that has
    imported pandas and matplotlib that is ~100,000 objects and ~50 ms per sample — more than the
    code being timed, and it made a sweep take minutes. ``gc.freeze()`` moves them to a permanent
    generation that collections skip (the standard library's tool for exactly this); the measured
    code's own garbage is still collected. Use as a call (``memory.frozen_heap()``: for a notebook,
    for good) or as a ``with`` block (unfrozen again at the end: for a grader or a test).
    """

    def __init__(self) -> None:
        gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()

    def __repr__(self) -> str:
        return f"frozen_heap({self.frozen:,} objects hidden from the garbage collector)"

    def __enter__(self) -> "frozen_heap":
        return self

    def __exit__(self, *exc_info) -> None:
        gc.unfreeze()
