"""Order of growth from operation counts: deterministic evidence to put next to a timing sweep.

A timing sweep's fitted slope (``harness.sweep(...).slopes``) wobbles with the machine. The number
of comparisons and hashes an algorithm makes does not: wrap the keys in :class:`Counted` and count.

    from perflab import complexity

    def make(n):                      # inputs of size n, keys wrapped so every == and hash() is counted
        return (complexity.counted(range(n)), complexity.counted(range(0, 2 * n, 2)))

    growth = complexity.count_sweep({"x in list": lambda a, b: [x for x in a if x in b],
                                     "x in set": lambda a, b: (s := set(b)) and [x for x in a if x in s]},
                                    sizes=[250, 500, 1000, 2000], setup=make)
    growth.slopes                     # {'x in list': 2.0, 'x in set': 1.0}
    growth.table                      # operations per variant and size

``Counted`` is an ``int`` subclass: it prints, sorts, hashes and compares like the int it holds, so
the code under test needs no change; every ``==``, ``<`` (and friends) and ``hash()`` adds one to a
module-wide counter. Python-level dunder calls are ~50x slower than C's int comparisons, so count
at smaller sizes than you time.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from perflab import progress
from perflab.results import ResultMixin

__all__ = ["Counted", "counted", "counting", "count_ops", "count_sweep", "CountSweep", "fitted_slope",
           "describe_slope", "self_check"]

_lock = threading.Lock()
_count = 0


def _tick() -> None:
    global _count
    _count += 1  # a lost increment under threads would only blur a count; the lock is for reset/read


class Counted(int):
    """An int that counts every comparison and hash made with it (see the module docstring)."""

    __slots__ = ()

    def __eq__(self, other):
        _tick()
        return int.__eq__(self, other)

    def __ne__(self, other):
        _tick()
        return int.__ne__(self, other)

    def __lt__(self, other):
        _tick()
        return int.__lt__(self, other)

    def __le__(self, other):
        _tick()
        return int.__le__(self, other)

    def __gt__(self, other):
        _tick()
        return int.__gt__(self, other)

    def __ge__(self, other):
        _tick()
        return int.__ge__(self, other)

    def __hash__(self):
        _tick()
        return int.__hash__(self)

    def __repr__(self) -> str:
        return int.__repr__(self)


def counted(values: Iterable[int]) -> list[Counted]:
    """``[Counted(v) for v in values]``."""
    return [Counted(v) for v in values]


class counting:
    """``with counting() as c: ...`` then ``c.operations``: comparisons and hashes made inside."""

    def __enter__(self) -> "counting":
        with _lock:
            self._start = _count
        self.operations = 0
        return self

    def __exit__(self, *exc_info) -> None:
        with _lock:
            self.operations = _count - self._start


def count_ops(fn: Callable, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """``(operations, result)`` of one call."""
    with counting() as c:
        result = fn(*args, **kwargs)
    return c.operations, result


def fitted_slope(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(n) (values below 1 count as 1)."""
    if len(sizes) < 2:
        return math.nan
    x = np.log(np.asarray(sizes, float))
    y = np.log(np.maximum(np.asarray(values, float), 1.0))
    return float(np.polyfit(x, y, 1)[0])


def describe_slope(slope: float) -> str:
    """A word for a fitted slope: constant, logarithmic-ish, linear, n log n-ish, quadratic, worse."""
    if not math.isfinite(slope):
        return "unknown"
    if slope < 0.3:
        return "constant"
    if slope < 0.8:
        return "sub-linear"
    if slope <= 1.2:
        return "linear"
    if slope < 1.6:
        return "worse than linear"
    if slope < 2.4:
        return "quadratic"
    return "worse than quadratic"


@dataclass(frozen=True)
class CountSweep(ResultMixin):
    """Operation counts per variant and size, and their fitted log-log slopes."""

    sizes: tuple[int, ...]
    counts: Mapping[str, tuple[int, ...]]

    @property
    def slopes(self) -> dict[str, float]:
        return {label: fitted_slope(self.sizes, ops) for label, ops in self.counts.items()}

    @property
    def table(self):
        import pandas as pd

        frame = pd.DataFrame(self.counts, index=pd.Index(self.sizes, name="n"))
        frame.loc["slope"] = [round(self.slopes[c], 2) for c in frame.columns]
        return frame

    kind = "operation counts"

    @property
    def headline(self) -> str | None:
        """"x in list: slope 2.00 (quadratic), 250,000 operations at n=500 · x in set: …"."""
        if not self.sizes:
            return None
        largest = self.sizes[-1]
        return " · ".join(f"{label}: slope {self.slopes[label]:.2f} ({describe_slope(self.slopes[label])}), "
                          f"{ops[-1]:,} operations at n={largest:,}" for label, ops in self.counts.items())

    def tidy(self):
        """The result protocol's table: one row per variant and size."""
        import pandas as pd

        return pd.DataFrame([{"variant": label, "n": n, "operations": ops}
                             for label, counts in self.counts.items() for n, ops in zip(self.sizes, counts)])

    def _details(self) -> dict:
        return {"sizes": list(self.sizes), "counts": {k: list(v) for k, v in self.counts.items()},
                "slopes": {k: (None if not math.isfinite(v) else v) for k, v in self.slopes.items()}}

    def _repr_html_(self) -> str:
        return self.table.to_html()


def count_sweep(variants: Mapping[str, Callable] | list[Callable], sizes: Iterable[int], setup: Callable[[int], Any],
                equal: Callable[[Any, Any], bool] | None = None) -> CountSweep:
    """Count each variant's operations at each size (``setup(n)`` gives the arguments, shared).

    Variants and answers are handled as the harness does (``harness.normalise_variants``,
    ``harness.check_answers``): at each size every answer is compared with the first variant's, and a
    mismatch raises ``AnswerMismatch`` naming both.
    """
    from perflab.harness import check_answers, normalise_variants

    variants = normalise_variants(variants)
    ordered = tuple(sorted({int(n) for n in sizes}))
    counts: dict[str, list[int]] = {label: [] for label in variants}
    what = f"operations of {len(variants)} variant{'s' if len(variants) != 1 else ''}"
    with progress.track(len(ordered), unit="sizes", what=what) as tracker:
        for index, n in enumerate(ordered):
            tracker.update(index, detail=f"n={n:,}")
            arguments = setup(n)
            if not isinstance(arguments, tuple):
                arguments = (arguments,)
            answers = {}
            for label, fn in variants.items():
                ops, answers[label] = count_ops(fn, *arguments)
                counts[label].append(ops)
            check_answers(answers, equal)
            tracker.update(index + 1)
    return CountSweep(ordered, {label: tuple(ops) for label, ops in counts.items()})


def self_check(fn: Callable, original: Callable, inputs: Callable[..., tuple],
               sizes: Sequence[int] = (250, 500, 1_000, 2_000)) -> bool:
    """A lab's quick self-check: same results as ``original``, and how the operations grow.

    ``inputs(n, wrap=...)`` builds the arguments of size n with ids wrapped by ``wrap``. Prints the
    verdict and returns True when the answers agree and the fitted slope is at most 1.2. The grader
    also times the function at larger sizes; this only tells you early whether you are on track.
    """
    same = all(fn(*inputs(n)) == original(*inputs(n)) for n in (10, 200, 1_000))
    counts = []
    for n in sizes:
        with counting() as c:
            fn(*inputs(n, wrap=Counted))
        counts.append(c.operations)
    slope = fitted_slope(sizes, counts)
    print(f"same results as the original: {'yes' if same else 'NO'}")
    print("comparisons and hashes: " + ", ".join(f"n={n:,}: {ops:,}" for n, ops in zip(sizes, counts)))
    print(f"fitted slope {slope:.2f}: {describe_slope(slope)}" + ("" if slope <= 1.2 else " -> not linear yet"))
    return same and slope <= 1.2
