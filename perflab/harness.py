"""Measuring: time a bad and a good version of the same job, honestly, and say how sure we are.

Every lesson ends the same way: two (or more) functions that return the same answer, timed side by
side, and a sentence such as "range: 212x faster than EXTRACT (95% CI 190x–240x)".

Quick start::

    from perflab.harness import compare, sweep

    def by_extract(conn):
        \"\"\"EXTRACT\"\"\"               # the docstring's first line is the label
        return conn.execute("SELECT count(*) FROM orders WHERE EXTRACT(year FROM placed) = 2023").fetchone()

    def by_range(conn):
        \"\"\"range\"\"\"
        return conn.execute("SELECT count(*) FROM orders WHERE placed >= '2023-01-01' "
                            "AND placed < '2024-01-01'").fetchone()

    res = compare([by_extract, by_range], args=(conn,))   # first variant = the baseline ("bad")
    res                         # a table and the headline ratio
    res.ratio()                 # Ratio(slow='EXTRACT', fast='range', value=212.3, ci_low=190.1, ...)
    res.ratio().clear           # True when the 95% CI of the ratio excludes 1
    res.summary, res.runs       # tidy pandas DataFrames
    res.plot(save="dates-extract-vs-range")

    grow = sweep({"sum(range(n))": lambda n: sum(range(n)),
                  "n(n-1)/2": lambda n: n * (n - 1) // 2},
                 sizes=[1_000, 10_000, 100_000], setup=lambda n: n)
    grow.slopes                 # {'sum(range(n))': 1.0, 'n(n-1)/2': 0.0}: the empirical order of growth
    grow.plot()

Variants are a dict ``{label: callable}`` or a list of callables (labelled by the first line of the
docstring, else ``__name__``). They receive ``*args, **kwargs`` and are called many times, so they must
not change their arguments (sort a copy, roll back a transaction).

What ``compare()`` does, in order:

1. **Correctness first.** Every variant is called once and its answer compared with the first variant's
   (``equal(a, b)`` if given, else ``==``; DataFrames with ``.equals``, numpy arrays with
   ``array_equal``). A different answer raises :class:`AnswerMismatch` before anything is timed: a fast
   wrong answer is not an optimisation. This first call is also the warm-up.
2. **Calibration.** A sample runs a variant ``loops`` times back to back. Starting from one loop, the
   count is doubled until one sample lasts the preset's target (a few ms to ~100 ms), so that
   sub-microsecond calls are measured well above the timer's resolution. The count is then frozen.
3. **Rounds.** Each round takes one sample of every variant, in rotating order (round ``r`` starts with
   variant ``r % k``), so slow drifts of the machine (CPU clock, a neighbour's load) hit every variant
   alike and each ratio can be computed from samples taken side by side. ``gc.collect()`` runs before
   every sample so that one variant's garbage is not collected on another's clock; the collector stays
   enabled, because real code runs with it. Times come from ``time.perf_counter_ns``.
4. **Stopping.** After ``max_rounds``, or once ``min_rounds`` are done and another round would overrun
   the time budget (``max_seconds``, else the preset's). ``min_rounds`` (never below 6) always wins over
   the budget: when a single sample is longer than ``budget / min_rounds`` the comparison takes longer
   than the budget rather than report a median of two numbers; ``.notes`` then says so.

Statistics: per variant the median with an order-statistic (binomial) 95% CI, mean and stdev, and
p95/p99 only with at least 100 samples. A sample is the mean of ``loops`` calls, so these percentiles
describe samples, not single requests: measure tail latency with a load test, not here. The ratio of
two variants is the ratio of their medians, with a 95% CI from a bootstrap that resamples whole rounds
(keeping each round's pair together); a CI that spans 1 is reported as "no clear difference".

Presets (``preset=`` or the ``PERFLAB_PRESET`` environment variable): ``fast`` for tests and the tiny
scale, ``default`` for working through the course, ``rigorous`` for the numbers in the report.

Async variants (``async def``, or a callable that returns an awaitable) run inside one long-lived event
loop that the harness owns in a background thread. That keeps them working inside Jupyter, whose own
loop is already running, and keeps ``asyncio.run``'s start-up cost (~100 µs) out of the timings. Async
resources are bound to the loop that made them, so create them in the harness loop::

    pool = run_async(make_pool())          # not `await make_pool()` in the notebook's own loop
    res = compare({"one by one": fetch_serially, "gathered": fetch_gathered}, args=(pool,))
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import html
import inspect
import math
import os
import reprlib
import statistics
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from itertools import repeat
# Module-level names, looked up at each use, so tests can substitute a fake clock.
from time import perf_counter, perf_counter_ns
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from perflab import progress
from perflab.results import ResultMixin, attach_figure
from perflab.units import format_factor, format_seconds, time_unit  # noqa: F401 (re-exported)

__all__ = [
    "compare",
    "sweep",
    "run_async",
    "Comparison",
    "Sweep",
    "Ratio",
    "Preset",
    "PRESETS",
    "AnswerMismatch",
    "Sample",
    "resolve_preset",
    "default_equal",
    "format_seconds",
    "format_factor",
    "time_unit",
]

# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------

# Fewer rounds than this and neither a median nor its confidence interval means much: with 6 samples
# the order-statistic 95% CI of the median is exactly [min, max]; below that no exact 95% CI exists.
MIN_ROUNDS_FLOOR = 6


@dataclass(frozen=True)
class Preset:
    """How long and how carefully to measure."""

    name: str
    min_rounds: int
    max_rounds: int
    target_sample_seconds: float
    budget_seconds: float
    description: str = ""

    def __post_init__(self) -> None:
        if self.min_rounds < MIN_ROUNDS_FLOOR:
            raise ValueError(
                f"preset {self.name!r}: min_rounds={self.min_rounds} is below {MIN_ROUNDS_FLOOR}, "
                "too few samples for a median with a confidence interval"
            )
        if self.max_rounds < self.min_rounds:
            raise ValueError(f"preset {self.name!r}: max_rounds must be >= min_rounds")
        if self.target_sample_seconds <= 0 or self.budget_seconds <= 0:
            raise ValueError(f"preset {self.name!r}: times must be positive")

    def derived(self, name: str, **changes: Any) -> "Preset":
        """This preset with ``changes`` (rounds, budget, sample target), under a name of its own."""
        return replace(self, name=name, description="", **changes)


PRESETS: Mapping[str, Preset] = MappingProxyType({
    # Tests and the tiny scale. Two fast variants finish in ~0.1-0.5 s (most of it gc.collect());
    # a slow pair stops after ~2 s. Enough to catch a 2x difference, not a 10% one.
    "fast": Preset("fast", min_rounds=6, max_rounds=12, target_sample_seconds=0.002,
                   budget_seconds=2.0, description="tests / tiny scale: ~0.5 s, at most ~2 s"),
    # Working through the course. Two fast variants take ~1-2 s; 20 interleaved rounds resolve ~10%
    # differences on a quiet laptop (benchstat asks for 10-20 runs). Slow variants stop after ~15 s.
    "default": Preset("default", min_rounds=10, max_rounds=20, target_sample_seconds=0.015,
                      budget_seconds=15.0, description="the course: ~2 s, at most ~15 s"),
    # The numbers in the report. 50 rounds of ~75 ms samples: ~10 s for two fast variants, at most
    # ~2 minutes, the point where a sample is long enough (pyperf aims at 100 ms) for timer and
    # scheduling noise to vanish.
    "rigorous": Preset("rigorous", min_rounds=20, max_rounds=50, target_sample_seconds=0.075,
                       budget_seconds=120.0, description="the report: ~10 s, at most ~2 min"),
})

# Doubling stops here even if a sample is still shorter than the target: a call that takes ~0 ns is
# not made measurable by 100 million more of it, and calibration must always end.
MAX_LOOPS = 2**26

# Resamples for the bootstrap CI of a ratio: 2000 puts the 2.5th/97.5th percentiles within ~1% of
# where 100 000 would, and takes ~1 ms. The fixed seed makes a Comparison's ratios reproducible.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20240611
CONFIDENCE = 0.95

# p95/p99 of fewer samples are just the largest one or two values.
MIN_SAMPLES_FOR_PERCENTILES = 100


def resolve_preset(preset: str | Preset | None = None) -> Preset:
    """The preset to use: a :class:`Preset`, a name, or ``$PERFLAB_PRESET``, else ``default``."""
    if isinstance(preset, Preset):
        return preset
    name = preset if preset is not None else (os.environ.get("PERFLAB_PRESET") or "default")
    key = str(name).strip().lower()
    if key not in PRESETS:
        source = "" if preset is not None else " (from PERFLAB_PRESET)"
        raise ValueError(
            f"unknown preset {name!r}{source}; choose one of: {', '.join(PRESETS)}"
        )
    return PRESETS[key]


# --------------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------------

# The formatting helpers live in perflab.units (shared with plots and report without an import
# cycle): format_factor, format_seconds and time_unit stay importable from here.

_ANSWER_REPR = reprlib.Repr()
_ANSWER_REPR.maxstring = 80
_ANSWER_REPR.maxother = 160
_ANSWER_REPR.maxlist = _ANSWER_REPR.maxtuple = _ANSWER_REPR.maxdict = _ANSWER_REPR.maxset = 8


def _short_repr(value: Any) -> str:
    text = " ".join(_ANSWER_REPR.repr(value).split())
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):
        return f"{type(value).__name__} of shape {shape}: {text}"
    return text


# --------------------------------------------------------------------------------------------------
# Ratio
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    """How many times faster ``fast`` is than ``slow``: ``value = median(slow) / median(fast)``.

    ``ci_low``/``ci_high`` bound the 95% bootstrap CI. ``value < 1`` means ``fast`` was in fact slower.
    """

    slow: str
    fast: str
    value: float
    ci_low: float
    ci_high: float

    @property
    def clear(self) -> bool:
        """True when the 95% CI excludes 1: the difference is not plausibly noise."""
        return self.ci_low > 1.0 or self.ci_high < 1.0

    def __str__(self) -> str:
        if not self.clear:
            return f"no clear difference (95% CI {self._interval(self.ci_low, self.ci_high, self.ci_high)})"
        if self.value >= 1.0:
            return (f"{format_factor(self.value)}x faster "
                    f"(95% CI {self._interval(self.ci_low, self.ci_high, self.value)})")
        # Slower: say "3.0x slower" rather than "0.33x faster", with the CI inverted to match.
        slower = 1 / self.value
        return (f"{format_factor(slower)}x slower "
                f"(95% CI {self._interval(1 / self.ci_high, 1 / self.ci_low, slower)})")

    @staticmethod
    def _interval(low: float, high: float, precision_of: float) -> str:
        return f"{format_factor(low, precision_of)}x–{format_factor(high, precision_of)}x"

    @property
    def headline(self) -> str:
        """``"range: 212x faster than EXTRACT (95% CI 190x–240x)"``."""
        if not self.clear:
            return f"{self.fast} vs {self.slow}: {self}"
        verdict, _, interval = str(self).partition(" (")
        return f"{self.fast}: {verdict} than {self.slow} ({interval}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "slow": self.slow,
            "fast": self.fast,
            "value": _json_number(self.value),
            "ci_low": _json_number(self.ci_low),
            "ci_high": _json_number(self.ci_high),
            "clear": self.clear,
            "text": str(self),
            "headline": self.headline,
        }


def _bootstrap_ratio(slow: np.ndarray, fast: np.ndarray) -> tuple[float, float, float]:
    """Ratio of medians and its percentile-bootstrap CI, resampling rounds (pairs stay together)."""
    value = float(np.median(slow) / np.median(fast))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    picks = rng.integers(0, len(slow), size=(BOOTSTRAP_RESAMPLES, len(slow)))
    resampled = np.median(slow[picks], axis=1) / np.median(fast[picks], axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return value, float(low), float(high)


def _median_ci(values: Sequence[float]) -> tuple[float, float, bool]:
    """Order-statistic CI of the median: ``(low, high, exact)``.

    The number of samples below the true median is Binomial(n, 1/2), so ``[x_(j), x_(n+1-j)]`` covers
    it with probability ``1 - 2 P(B <= j-1)``; take the largest ``j`` keeping that >= 95%. With fewer
    than 6 samples no ``j`` does: fall back to ``[min, max]`` and return ``exact=False``.
    """
    ordered = sorted(values)
    n = len(ordered)
    alpha = 1 - CONFIDENCE
    j = 0
    cumulative = 0.0
    while j < n // 2:
        cumulative += math.comb(n, j) / 2**n        # P(B <= j)
        if 2 * cumulative > alpha:
            break
        j += 1
    if j == 0:
        return ordered[0], ordered[-1], False
    return ordered[j - 1], ordered[n - j], True


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


class Sample(NamedTuple):
    """One timed sample: ``loops`` back-to-back calls of one variant in one round."""

    variant: str
    round: int
    position: int
    loops: int
    seconds: float  # per call


_SUMMARY_COLUMNS = ["variant", "samples", "loops", "median_ms", "ci_low_ms", "ci_high_ms",
                    "p95_ms", "p99_ms", "mean_ms", "stdev_ms"]
_RUNS_COLUMNS = list(Sample._fields)


def _json_number(value: Any) -> Any:
    """A JSON-safe scalar: numpy scalars become Python ones, NaN and infinities become None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{key: _json_number(value) for key, value in row.items()}
            for row in frame.to_dict(orient="records")]


@dataclass(frozen=True, eq=False)
class Comparison(ResultMixin):
    """The immutable result of :func:`compare`. DataFrames are computed once; you get copies."""

    labels: tuple[str, ...]
    baseline: str
    preset: Preset
    answers_checked: bool
    samples: tuple[Sample, ...]
    elapsed_seconds: float
    async_variants: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    # ---- data ------------------------------------------------------------------------------------

    @property
    def rounds(self) -> int:
        return 1 + max(sample.round for sample in self.samples) if self.samples else 0

    @cached_property
    def _seconds(self) -> Mapping[str, np.ndarray]:
        """Per-call seconds of each variant, ordered by round (so index i pairs across variants)."""
        by_label: dict[str, list[tuple[int, float]]] = {label: [] for label in self.labels}
        for sample in self.samples:
            by_label[sample.variant].append((sample.round, sample.seconds))
        arrays = {label: np.array([s for _, s in sorted(pairs)]) for label, pairs in by_label.items()}
        for array in arrays.values():
            array.setflags(write=False)
        return MappingProxyType(arrays)

    @cached_property
    def _runs(self) -> pd.DataFrame:
        return pd.DataFrame(self.samples, columns=_RUNS_COLUMNS)

    @property
    def runs(self) -> pd.DataFrame:
        """One row per sample: variant, round, position, loops, seconds (per call)."""
        return self._runs.copy()

    @cached_property
    def _summary(self) -> pd.DataFrame:
        loops_of = {sample.variant: sample.loops for sample in self.samples}
        rows = []
        for label in self.labels:
            seconds = self._seconds[label]
            low, high, _ = _median_ci(seconds)
            enough = len(seconds) >= MIN_SAMPLES_FOR_PERCENTILES
            rows.append({
                "variant": label,
                "samples": len(seconds),
                "loops": loops_of.get(label, 0),
                "median_ms": float(np.median(seconds)) * 1e3,
                "ci_low_ms": low * 1e3,
                "ci_high_ms": high * 1e3,
                "p95_ms": float(np.percentile(seconds, 95)) * 1e3 if enough else math.nan,
                "p99_ms": float(np.percentile(seconds, 99)) * 1e3 if enough else math.nan,
                "mean_ms": statistics.fmean(seconds) * 1e3,
                "stdev_ms": statistics.stdev(seconds) * 1e3 if len(seconds) > 1 else math.nan,
            })
        return pd.DataFrame(rows, columns=_SUMMARY_COLUMNS)

    @property
    def summary(self) -> pd.DataFrame:
        """One row per variant: samples, loops, median and its 95% CI, p95/p99, mean, stdev (ms)."""
        return self._summary.copy()

    @cached_property
    def ci_fallback(self) -> tuple[str, ...]:
        """Variants whose median CI is only [min, max], because they have fewer than 6 samples."""
        return tuple(label for label in self.labels if not _median_ci(self._seconds[label])[2])

    def median_seconds(self, label: str) -> float:
        """The median time per call of one variant, in seconds."""
        return float(np.median(self._seconds[self._known(label)]))

    # ---- ratios ----------------------------------------------------------------------------------

    def _known(self, label: str) -> str:
        if label not in self.labels:
            raise KeyError(f"no variant {label!r}; variants are {list(self.labels)}")
        return label

    @cached_property
    def _ratio_cache(self) -> dict[tuple[str, str], Ratio]:
        return {}

    def ratio(self, slow: str | None = None, fast: str | None = None) -> Ratio:
        """How many times faster ``fast`` is than ``slow`` (paired rounds, bootstrap 95% CI).

        Default: the baseline against the fastest other variant.
        """
        if len(self.labels) < 2:
            raise ValueError("a ratio needs two variants; this comparison has one")
        slow = self._known(slow) if slow is not None else self.baseline
        if fast is None:
            others = [label for label in self.labels if label != slow]
            fast = min(others, key=self.median_seconds)
        else:
            self._known(fast)
        if fast == slow:
            raise ValueError(f"compare {slow!r} with a different variant, not itself")
        key = (slow, fast)
        if key not in self._ratio_cache:
            value, low, high = _bootstrap_ratio(self._seconds[slow], self._seconds[fast])
            self._ratio_cache[key] = Ratio(slow, fast, value, low, high)
        return self._ratio_cache[key]

    @cached_property
    def _ratios(self) -> pd.DataFrame:
        rows = []
        for label in self.labels:
            if label == self.baseline:
                continue
            r = self.ratio(self.baseline, label)
            rows.append({"variant": label, "baseline": self.baseline, "ratio": r.value,
                         "ci_low": r.ci_low, "ci_high": r.ci_high, "clear": r.clear,
                         "text": str(r)})
        return pd.DataFrame(rows, columns=["variant", "baseline", "ratio", "ci_low", "ci_high",
                                           "clear", "text"])

    @property
    def ratios(self) -> pd.DataFrame:
        """Each other variant against the baseline: ratio > 1 means faster than the baseline."""
        return self._ratios.copy()

    @property
    def headline(self) -> str | None:
        """The default ratio as a sentence, or None with a single variant."""
        return self.ratio().headline if len(self.labels) > 1 else None

    # ---- output ----------------------------------------------------------------------------------

    def plot(self, ax=None, title: str | None = None, save: str | bool | None = None):
        """Bars of the median time per call with 95% CI whiskers and the headline ratio."""
        from perflab import plots

        figure = plots.bars(self, ax=ax, title=title, save=save)
        attach_figure(self, figure)
        return figure

    kind = "comparison"

    def tidy(self) -> pd.DataFrame:
        """The result protocol's table: one row per variant (``summary``)."""
        return self.summary

    def _details(self) -> dict[str, Any]:
        """Everything, JSON-safe (NaN becomes None), for ``report.record`` (inside ``to_dict``)."""
        return {
            "labels": list(self.labels),
            "baseline": self.baseline,
            "preset": self.preset.name,
            "preset_settings": asdict(self.preset),
            "answers_checked": self.answers_checked,
            "rounds": self.rounds,
            "elapsed_seconds": _json_number(self.elapsed_seconds),
            "async_variants": list(self.async_variants),
            "notes": self._all_notes(),
            "ci_fallback": list(self.ci_fallback),
            "ratio": self.ratio().to_dict() if len(self.labels) > 1 else None,
            "ratios": _json_records(self._ratios),
            "summary": _json_records(self._summary),
            "runs": _json_records(self._runs),
        }

    def _table_rows(self) -> list[tuple[str, str, str, str, str]]:
        rows = []
        for row in self._summary.itertuples(index=False):
            unit, _ = time_unit(row.median_ms / 1e3)
            rows.append((
                row.variant,
                format_seconds(row.median_ms / 1e3),
                f"{format_seconds(row.ci_low_ms / 1e3, unit)} – {format_seconds(row.ci_high_ms / 1e3, unit)}",
                str(row.loops),
                str(row.samples),
            ))
        return rows

    def _all_notes(self) -> list[str]:
        notes = list(self.notes)
        if self.ci_fallback:
            notes.append(f"fewer than 6 samples for {list(self.ci_fallback)}: their CI is only "
                         "[min, max], which covers the median with less than 95% confidence")
        return notes

    def _caption(self) -> str:
        checked = "answers checked" if self.answers_checked else "answers NOT checked"
        return (f"Comparison · preset {self.preset.name} · {self.rounds} interleaved rounds · "
                f"{checked} · took {self.elapsed_seconds:.1f} s")

    def __repr__(self) -> str:
        header = ("variant", "median", "95% CI of median", "loops", "samples")
        rows = [header, *self._table_rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        aligned = [
            "  ".join([row[0].ljust(widths[0]), *(cell.rjust(width) for cell, width in
                                                  zip(row[1:], widths[1:]))])
            for row in rows
        ]
        lines = [self._caption(), *("  " + line for line in aligned)]
        if self.headline:
            lines.append(self.headline)
        lines.extend(f"note: {note}" for note in self._all_notes())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in
                       ("variant", "median", "95% CI of median", "loops", "samples"))
        body = "".join(
            "<tr>" + "".join(
                f'<td style="text-align:{"left" if i == 0 else "right"}">{html.escape(cell)}</td>'
                for i, cell in enumerate(row)
            ) + "</tr>"
            for row in self._table_rows()
        )
        parts = [f"<div><p><small>{html.escape(self._caption())}</small></p>",
                 f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"]
        if self.headline:
            parts.append(f"<p><b>{html.escape(self.headline)}</b></p>")
        parts.extend(f"<p><small>note: {html.escape(note)}</small></p>" for note in self._all_notes())
        parts.append("</div>")
        return "".join(parts)


@dataclass(frozen=True, eq=False)
class Sweep(ResultMixin):
    """The immutable result of :func:`sweep`: one :class:`Comparison` per measured size."""

    labels: tuple[str, ...]
    sizes: tuple[int, ...]                      # every size asked for, ascending
    measured: tuple[Comparison, ...]            # one per size actually measured, same order
    preset: Preset
    max_ms: float | None = None
    skipped: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Variants cut off by ``max_ms``: ``{variant: the first size at which it was not run}``."""

    @property
    def measured_sizes(self) -> tuple[int, ...]:
        return self.sizes[:len(self.measured)]

    @property
    def comparisons(self) -> dict[int, Comparison]:
        """``{n: Comparison}`` for every measured size."""
        return dict(zip(self.measured_sizes, self.measured))

    @cached_property
    def _runs(self) -> pd.DataFrame:
        frames = [c._runs.assign(n=n) for n, c in zip(self.measured_sizes, self.measured)]
        runs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_RUNS_COLUMNS + ["n"])
        return runs[["n", *_RUNS_COLUMNS]]

    @property
    def runs(self) -> pd.DataFrame:
        """One row per sample: n, variant, round, position, loops, seconds (per call)."""
        return self._runs.copy()

    @cached_property
    def _summary(self) -> pd.DataFrame:
        columns = ["variant", "n", "median_ms", "ci_low_ms", "ci_high_ms"]
        rows = []
        for label in self.labels:
            for n, comparison in zip(self.measured_sizes, self.measured):
                if label in comparison.labels:
                    row = comparison._summary.set_index("variant").loc[label]
                    rows.append({"variant": label, "n": n, "median_ms": row.median_ms,
                                 "ci_low_ms": row.ci_low_ms, "ci_high_ms": row.ci_high_ms})
        return pd.DataFrame(rows, columns=columns)

    @property
    def summary(self) -> pd.DataFrame:
        """One row per variant and size: median and its 95% CI in ms."""
        return self._summary.copy()

    @cached_property
    def _slopes(self) -> Mapping[str, float]:
        slopes = {}
        for label in self.labels:
            rows = self._summary[self._summary.variant == label]
            if len(rows) < 2:
                slopes[label] = math.nan
                continue
            slope, _ = np.polyfit(np.log(rows.n.to_numpy(float)), np.log(rows.median_ms.to_numpy()), 1)
            slopes[label] = float(slope)
        return MappingProxyType(slopes)

    @property
    def slopes(self) -> dict[str, float]:
        """Least-squares slope of log(median) against log(n): ~0 constant, ~1 linear, ~2 quadratic.

        NaN for a variant measured at fewer than two sizes.
        """
        return dict(self._slopes)

    def plot(self, ax=None, title: str | None = None, save: str | bool | None = None,
             xlabel: str = "n (input size)"):
        """Log-log median time against n with CI bands, each line labelled with its slope."""
        from perflab import plots

        figure = plots.scaling(self, ax=ax, title=title, save=save, xlabel=xlabel)
        attach_figure(self, figure)
        return figure

    kind = "sweep"

    @property
    def headline(self) -> str | None:
        """The fitted growth of each variant, and the default ratio at the largest size measured."""
        from perflab.complexity import describe_slope

        parts = [f"{label} slope {slope:.2f} ({describe_slope(slope)})"
                 for label, slope in self._slopes.items() if math.isfinite(slope)]
        if not parts:
            return None
        text = "log-log slope: " + ", ".join(parts)
        if self.measured and len(self.measured[-1].labels) > 1:
            text += f"; at n={self.measured_sizes[-1]:,}: {self.measured[-1].headline}"
        return text

    def tidy(self) -> pd.DataFrame:
        """The result protocol's table: one row per variant and size (``summary``)."""
        return self.summary

    def _details(self) -> dict[str, Any]:
        """Everything, JSON-safe (NaN becomes None), for ``report.record`` (inside ``to_dict``)."""
        return {
            "labels": list(self.labels),
            "sizes": list(self.sizes),
            "measured_sizes": list(self.measured_sizes),
            "preset": self.preset.name,
            "max_ms": _json_number(self.max_ms),
            "skipped": dict(self.skipped),
            "slopes": {label: _json_number(slope) for label, slope in self._slopes.items()},
            "summary": _json_records(self._summary),
            "comparisons": {str(n): c.to_dict() for n, c in zip(self.measured_sizes, self.measured)},
        }

    def __repr__(self) -> str:
        sizes = self.measured_sizes
        header = ("variant", *(f"n={n:,}" for n in sizes), "slope")
        medians = self._summary.set_index(["variant", "n"]).median_ms
        rows = [header]
        for label in self.labels:
            cells = [format_seconds(medians[(label, n)] / 1e3) if (label, n) in medians.index else "—"
                     for n in sizes]
            slope = self._slopes[label]
            rows.append((label, *cells, "n/a" if math.isnan(slope) else f"{slope:.2f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [f"Sweep · preset {self.preset.name} · median time per call"]
        lines += ["  " + "  ".join([row[0].ljust(widths[0]),
                                    *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))])
                  for row in rows]
        lines += [f"note: {label} skipped from n={n:,} (median over max_ms={self.max_ms:g})"
                  for label, n in self.skipped.items()]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>"


# --------------------------------------------------------------------------------------------------
# The harness's event loop
# --------------------------------------------------------------------------------------------------


class _HarnessLoop:
    """One event loop, in a daemon thread, alive for the whole process.

    Jupyter's kernel already runs a loop in the main thread, so ``asyncio.run`` fails there, and a
    fresh loop per call would both cost ~100 µs per call and break async resources (pools,
    clients) that belong to a loop. One long-lived loop in its own thread avoids all three.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run_forever() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run_forever, name="perflab-harness-loop", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def run(self, awaitable: Any) -> Any:
        """Run ``awaitable`` to completion in the harness loop; block this thread until it is done."""
        loop = self.loop()
        if threading.current_thread() is self._thread:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            raise RuntimeError("compare()/run_async() cannot be called from inside a variant that "
                               "runs in the harness's own event loop")
        future = asyncio.run_coroutine_threadsafe(_await(awaitable), loop)
        try:
            if progress.current() is not None:
                # A measurement is showing progress: redraw its line while waiting (updates made
                # in the loop's thread are drawn here, in the thread that owns the cell's output).
                while True:
                    try:
                        return future.result(timeout=progress.REFRESH)
                    except concurrent.futures.TimeoutError:
                        progress.refresh()
            return future.result()
        except BaseException:
            # Interrupted (Ctrl-C in a notebook): stop the coroutine rather than leave it running.
            future.cancel()
            raise


async def _await(awaitable: Any) -> Any:
    return await awaitable


_HARNESS_LOOP = _HarnessLoop()


def run_async(awaitable: Any) -> Any:
    """Run a coroutine in the harness's event loop and return its result.

    Use it to create async resources (connection pools, HTTP clients) that async variants will use:
    they must belong to the loop the variants run in.
    """
    return _HARNESS_LOOP.run(awaitable)


# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------


class AnswerMismatch(ValueError):
    """A variant returned a different answer from the first variant's."""

    def __init__(self, reference: str, variant: str, expected: Any, actual: Any):
        self.reference, self.variant, self.expected, self.actual = reference, variant, expected, actual
        width = max(len(reference), len(variant))
        super().__init__(
            f"{variant!r} returned a different answer from {reference!r} (the first variant, "
            f"which every answer is compared with):\n"
            f"  {reference.ljust(width)} -> {_short_repr(expected)}\n"
            f"  {variant.ljust(width)} -> {_short_repr(actual)}\n"
            "Nothing was timed: a fast wrong answer is not an optimisation. If these answers should "
            "count as the same (floats, unordered rows), pass equal=... to compare()."
        )


def default_equal(a: Any, b: Any) -> bool:
    """``==``, made sane for pandas objects (``.equals``) and numpy arrays (``array_equal``)."""
    if a is b:
        return True
    if isinstance(a, (pd.DataFrame, pd.Series, pd.Index)) or isinstance(b, (pd.DataFrame, pd.Series, pd.Index)):
        return type(a) is type(b) and a.equals(b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        try:
            return bool(np.array_equal(a, b, equal_nan=True))
        except TypeError:  # equal_nan is undefined for object arrays
            return bool(np.array_equal(a, b))
    try:
        result = a == b
        if isinstance(result, (bool, np.bool_)):
            return bool(result)
        return bool(np.all(result))
    except (TypeError, ValueError):
        return False


def check_answers(answers: Mapping[str, Any], equal: Callable[[Any, Any], bool] | None = None) -> None:
    """Compare every answer with the first one's; raise :class:`AnswerMismatch` naming both.

    The one answer check of the course: ``compare``, ``sweep``, ``memory.compare_peaks``,
    ``complexity.count_sweep`` and ``latency.latencies(check=True)`` all go through it, before timing.
    """
    same = equal or default_equal
    items = list(answers.items())
    if not items:
        return
    reference_label, reference = items[0]
    for label, answer in items[1:]:
        if not same(reference, answer):
            raise AnswerMismatch(reference_label, label, reference, answer)


def normalise_variants(variants: Mapping[str, Callable] | Iterable[Callable]) -> dict[str, Callable]:
    """``{label: function}`` from a dict or a list of functions (labelled by docstring, then name)."""
    return _normalise_variants(variants)


def _label_of(fn: Callable) -> str:
    # A partial's own docstring describes functools.partial; the wrapped function's describes it.
    while isinstance(fn, functools.partial):
        fn = fn.func
    doc = inspect.getdoc(fn)
    # A lambda or partial inherits no docstring of its own; builtins' docstrings are signatures.
    if doc and not inspect.isbuiltin(fn):
        first_line = doc.strip().splitlines()[0].strip()
        if first_line:
            return first_line
    return getattr(fn, "__name__", None) or type(fn).__name__


def _normalise_variants(variants: Mapping[str, Callable] | Iterable[Callable]) -> dict[str, Callable]:
    if isinstance(variants, Mapping):
        pairs = [(str(label), fn) for label, fn in variants.items()]
    elif callable(variants):
        raise TypeError("pass the variants as a dict {label: function} or a list of functions")
    else:
        pairs = [(_label_of(fn) if callable(fn) else repr(fn), fn) for fn in variants]
    if not pairs:
        raise ValueError("no variants to compare")
    for label, fn in pairs:
        if inspect.iscoroutine(fn):
            fn.close()  # avoid the "never awaited" warning on top of our error
            raise TypeError(f"variant {label!r} is a coroutine object, not a function: pass the "
                            "async function itself (drop the parentheses)")
        if not callable(fn):
            raise TypeError(f"variant {label!r} is not callable: {fn!r}")
    labels = [label for label, _ in pairs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"two variants share the label(s) {duplicates}; pass a dict "
                         "{label: function} to name them apart")
    return dict(pairs)


def _is_async_function(fn: Callable) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class _Variant:
    """A variant bound to its arguments, able to be called once or timed for ``loops`` calls."""

    def __init__(self, label: str, fn: Callable, args: tuple, kwargs: dict):
        self.label, self.fn, self.args, self.kwargs = label, fn, args, kwargs
        self.is_async = _is_async_function(fn)

    def call_once(self) -> Any:
        if self.is_async:
            return _HARNESS_LOOP.run(self.fn(*self.args, **self.kwargs))
        result = self.fn(*self.args, **self.kwargs)
        if inspect.isawaitable(result):
            # A plain callable that returns an awaitable (a lambda around a coroutine): async from now on.
            self.is_async = True
            return _HARNESS_LOOP.run(result)
        return result

    def sample_ns(self, loops: int) -> int:
        """Nanoseconds for ``loops`` back-to-back calls, after a full garbage collection."""
        if self.is_async:
            return _HARNESS_LOOP.run(_timed_async(self.fn, self.args, self.kwargs, loops))
        return _timed_sync(self.fn, self.args, self.kwargs, loops)


def _timed_sync(fn: Callable, args: tuple, kwargs: dict, loops: int) -> int:
    gc.collect()
    # Three loops so that calls without arguments don't pay for unpacking empty *args/**kwargs,
    # which would be a measurable share of a 50 ns call.
    if kwargs:
        start = perf_counter_ns()
        for _ in repeat(None, loops):
            fn(*args, **kwargs)
    elif args:
        start = perf_counter_ns()
        for _ in repeat(None, loops):
            fn(*args)
    else:
        start = perf_counter_ns()
        for _ in repeat(None, loops):
            fn()
    return perf_counter_ns() - start


async def _timed_async(fn: Callable, args: tuple, kwargs: dict, loops: int) -> int:
    # Timed inside the loop, so the hop between threads that delivers this coroutine is not counted.
    gc.collect()
    start = perf_counter_ns()
    for _ in repeat(None, loops):
        await fn(*args, **kwargs)
    return perf_counter_ns() - start


def _with_context(error: BaseException, label: str, stage: str) -> BaseException:
    error.add_note(f"(perflab.harness: raised by variant {label!r} while {stage})")
    return error


# --------------------------------------------------------------------------------------------------
# compare() and sweep()
# --------------------------------------------------------------------------------------------------


def compare(
    variants: Mapping[str, Callable] | Sequence[Callable],
    args: tuple | list = (),
    kwargs: Mapping[str, Any] | None = None,
    preset: str | Preset | None = None,
    check: bool = True,
    equal: Callable[[Any, Any], bool] | None = None,
    baseline: str | None = None,
    max_seconds: float | None = None,
    loops: int | None = None,
) -> Comparison:
    """Check that the variants agree, then time them interleaved. See the module docstring.

    ``baseline`` (default: the first variant) is what ratios are computed against. ``max_seconds``
    replaces the preset's time budget; ``min_rounds`` are run even if that overruns it. ``loops``
    fixes the calls per sample instead of calibrating them: for calls far longer than the preset's
    target sample time, where calibration can only settle on 1 and costs one more call per variant.
    """
    settings = resolve_preset(preset)
    budget = settings.budget_seconds if max_seconds is None else float(max_seconds)
    if not budget > 0:
        raise ValueError(f"max_seconds must be positive, not {max_seconds!r}")
    if loops is not None and (not isinstance(loops, int) or loops < 1):
        raise ValueError(f"loops must be a positive int, not {loops!r}")
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple of positional arguments, e.g. args=(conn,), "
                        f"not {type(args).__name__}")
    functions = _normalise_variants(variants)
    labels = tuple(functions)
    if baseline is None:
        baseline = labels[0]
    elif baseline not in functions:
        raise ValueError(f"baseline {baseline!r} is not one of the variants {list(labels)}")
    bound = [_Variant(label, fn, tuple(args), dict(kwargs or {})) for label, fn in functions.items()]

    what = f"{len(bound)} variant{'s' if len(bound) != 1 else ''}"
    with progress.track(settings.max_rounds, unit="rounds", what=what) as tracker:
        return _compare(bound, labels, baseline, settings, budget, check, equal, tracker, loops)


def _compare(bound: list[_Variant], labels: tuple[str, ...], baseline: str, settings: Preset, budget: float,
             check: bool, equal: Callable[[Any, Any], bool] | None, tracker: progress.Tracker,
             fixed_loops: int | None = None) -> Comparison:
    started = perf_counter()

    # 1. Correctness first; the call doubles as the warm-up.
    reference_answer: Any = None
    same = equal or default_equal
    for index, variant in enumerate(bound):
        tracker.update(detail=f"checking {variant.label!r}")
        try:
            answer = variant.call_once()
        except Exception as error:
            raise _with_context(error, variant.label, "being called once to check its answer")
        if not check:
            continue
        if index == 0:
            reference_answer = answer
        elif not same(reference_answer, answer):
            raise AnswerMismatch(bound[0].label, variant.label, reference_answer, answer)

    # gc.collect() runs before every sample; in a notebook with pandas, SQLAlchemy and matplotlib
    # loaded, collecting the whole heap takes ~0.1 s each time. Freezing what exists now (the
    # modules, the data, the answers) moves it out of the collector's sight, so each collection
    # only visits the garbage the variants themselves make. Unfrozen afterwards, unless the caller
    # had frozen the heap already.
    was_frozen = gc.get_freeze_count() > 0
    gc.collect()
    gc.freeze()
    try:
        # 2. Calibration: double the loop count until one sample reaches the target; then freeze it.
        target_ns = settings.target_sample_seconds * 1e9
        loops_of: dict[str, int] = {}
        notes: list[str] = []
        for variant in bound:
            if fixed_loops is not None:  # the caller fixed the count: nothing to calibrate
                loops_of[variant.label] = fixed_loops
                continue
            tracker.update(detail=f"calibrating {variant.label!r}")
            loops = 1
            try:
                while variant.sample_ns(loops) < target_ns and loops < MAX_LOOPS:
                    loops *= 2
            except Exception as error:
                raise _with_context(error, variant.label, "calibrating its loop count")
            loops_of[variant.label] = loops
            if loops >= MAX_LOOPS:
                notes.append(f"{variant.label!r} stayed under the target sample time after "
                             f"{MAX_LOOPS:,} loops; its time is close to the timer's resolution")

        # 3. Rounds, in rotating order.
        samples: list[Sample] = []
        count = len(bound)
        for round_number in range(settings.max_rounds):
            round_started = perf_counter()
            for position in range(count):
                variant = bound[(round_number + position) % count]
                loops = loops_of[variant.label]
                tracker.update(detail=f"timing {variant.label!r}")
                try:
                    elapsed_ns = variant.sample_ns(loops)
                except Exception as error:
                    raise _with_context(error, variant.label, f"being timed in round {round_number}")
                samples.append(Sample(variant.label, round_number, position, loops, elapsed_ns / loops / 1e9))
            now = perf_counter()
            rounds_done = round_number + 1
            # 4. Stop before a round that would overrun the budget, but never before min_rounds.
            if rounds_done >= settings.min_rounds and (now - started) + (now - round_started) > budget:
                break
            # The rounds the budget leaves room for, at this round's pace: the progress line's total.
            room = int(max(budget - (now - started), 0.0) / max(now - round_started, 1e-9))
            tracker.update(rounds_done, total=min(settings.max_rounds,
                                                  max(settings.min_rounds, rounds_done + room)))
        tracker.update(len(samples) // count if count else 0)
    finally:
        if not was_frozen:
            gc.unfreeze()

    elapsed = perf_counter() - started
    if elapsed > budget:
        notes.append(f"took {elapsed:.1f} s, over the {budget:g} s budget: the minimum of "
                     f"{settings.min_rounds} rounds was kept, as fewer samples would not support a "
                     "median with a confidence interval")
    return Comparison(
        labels=labels,
        baseline=baseline,
        preset=settings,
        answers_checked=bool(check),
        samples=tuple(samples),
        elapsed_seconds=elapsed,
        async_variants=tuple(v.label for v in bound if v.is_async),
        notes=tuple(notes),
    )


def sweep(
    variants: Mapping[str, Callable] | Sequence[Callable],
    sizes: Iterable[int],
    setup: Callable[[int], Any],
    preset: str | Preset | None = None,
    check: bool = True,
    equal: Callable[[Any, Any], bool] | None = None,
    max_ms: float | None = None,
    max_seconds: float | None = None,
    loops: int | None = None,
) -> Sweep:
    """Compare the variants at each size ``n``; fit how their time grows with ``n``.

    ``setup(n)`` builds the arguments once per size, shared by all variants (a non-tuple is passed
    as the single argument). Sizes run in ascending order. With ``max_ms``, a variant whose median
    exceeds it at some ``n`` is not run at larger sizes (recorded in ``Sweep.skipped``), so one
    quadratic variant cannot stall the sweep. ``max_seconds`` is each size's comparison budget
    (``compare(max_seconds=)``: the preset's ``min_rounds`` are still run); ``loops``: as for
    :func:`compare`, at every size.
    """
    settings = resolve_preset(preset)
    functions = _normalise_variants(variants)
    ordered_sizes = tuple(sorted({int(n) for n in sizes}))
    if not ordered_sizes:
        raise ValueError("sweep needs at least one size")
    if ordered_sizes[0] <= 0:
        raise ValueError("sizes must be positive: the slope is fitted on log(n)")
    active = dict(functions)
    measured: list[Comparison] = []
    skipped: dict[str, int] = {}
    what = f"{len(functions)} variant{'s' if len(functions) != 1 else ''}"
    with progress.track(len(ordered_sizes), unit="sizes", what=what) as tracker:
        for index, n in enumerate(ordered_sizes):
            if not active:
                break
            tracker.update(index, detail=f"n={n:,}")
            arguments = setup(n)
            if not isinstance(arguments, tuple):
                arguments = (arguments,)
            comparison = compare(active, args=arguments, preset=settings, check=check, equal=equal,
                                 max_seconds=max_seconds, loops=loops)
            measured.append(comparison)
            tracker.update(index + 1)
            if max_ms is not None and index + 1 < len(ordered_sizes):
                for label in list(active):
                    if comparison.median_seconds(label) * 1e3 > max_ms:
                        skipped[label] = ordered_sizes[index + 1]
                        del active[label]
    return Sweep(
        labels=tuple(functions),
        sizes=ordered_sizes,
        measured=tuple(measured),
        preset=settings,
        max_ms=max_ms,
        skipped=MappingProxyType(skipped),
    )
