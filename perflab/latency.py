"""Per-call latency distributions: what p50, p99 and the tail are made of.

The harness (``perflab.harness``) times *samples* that average many calls — right for "which version
is faster", blind to the tail. Here every call is timed on its own::

    from perflab import latency

    dist = latency.latencies({"before": page, "after": page_with_index},
                             calls=500, args_for=lambda i: (tenant_of_request(i),))
    dist.percentiles           # one row per variant: calls, mean, p50, p90, p99, p99.9, max (ms)
    dist.runs                  # tidy: variant, call, label, ms
    dist.plot(save="03_tail")  # ECDF with p50/p99 marked (plots.latency_distribution)

Calls of the variants are interleaved (call i of every variant, in rotating order), so a busy moment
of the machine hits every variant alike. ``args_for(i)`` gives call i's arguments — the same for
every variant, so they answer the same requests; ``label_for(i)`` (optional) tags each call, e.g. with
its tenant, so percentiles can be split by it (``dist.by_label()``). Times come from
``time.perf_counter_ns``; the garbage collector is left alone (a real request pays for it too).

This is a closed loop — the next call starts when the previous one ends — so it measures *service
time*; a load test with an arrival schedule (open loop) is what measures queueing on top of it.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from perflab import progress
from perflab.results import ResultMixin, attach_figure
from perflab.units import format_seconds

__all__ = ["latencies", "Latencies", "percentile_table", "PERCENTILES", "fan_out_slow_share"]

PERCENTILES = (50, 90, 99, 99.9)


def percentile_table(runs: pd.DataFrame, by: str | list[str] = "variant") -> pd.DataFrame:
    """calls, mean, p50, p90, p99, p99.9 and max (ms) per group of a tidy ``runs`` frame."""
    def row(ms: pd.Series) -> pd.Series:
        values = {"calls": len(ms), "mean_ms": ms.mean()}
        values.update({f"p{p:g}_ms": np.percentile(ms, p) for p in PERCENTILES})
        values["max_ms"] = ms.max()
        return pd.Series(values)

    table = runs.groupby(by, sort=False)["ms"].apply(row).unstack()
    table["calls"] = table["calls"].astype(int)
    return table


@dataclasses.dataclass(frozen=True)
class Latencies(ResultMixin):
    """Single-call latencies of one or more variants (see the module docstring)."""

    runs: pd.DataFrame  # variant, call, label, ms
    labels: tuple[str, ...]

    @property
    def percentiles(self) -> pd.DataFrame:
        return percentile_table(self.runs)

    def by_label(self) -> pd.DataFrame:
        """Percentiles per variant and call label (e.g. per tenant)."""
        return percentile_table(self.runs, ["variant", "label"])

    def percentile(self, variant: str, p: float, label: str | None = None) -> float:
        """The ``p``-th percentile (ms) of one variant's calls, optionally only those with ``label``."""
        ms = self.runs[self.runs.variant == variant]
        if label is not None:
            ms = ms[ms.label == label]
        return float(np.percentile(ms.ms, p))

    kind = "latencies"

    @property
    def headline(self) -> str:
        """'before: p50 52.1 µs, p99 1.90 ms · after: p50 …' (what the report shows)."""
        table = self.percentiles
        return " · ".join(f"{variant}: p50 {format_seconds(row.p50_ms / 1e3)}, "
                          f"p99 {format_seconds(row.p99_ms / 1e3)} ({int(row.calls):,} calls)"
                          for variant, row in table.iterrows())

    def tidy(self) -> pd.DataFrame:
        """The result protocol's table: one row per variant (calls, mean, p50 … max in ms)."""
        return self.percentiles.reset_index()

    def plot(self, ax=None, title: str | None = None, save: str | bool | None = None, **kwargs):
        from perflab import plots

        figure = plots.latency_distribution(self, ax=ax, title=title, save=save, **kwargs)
        attach_figure(self, figure)
        return figure

    def _details(self) -> dict[str, Any]:
        return {"variants": list(self.labels)}

    def _repr_html_(self) -> str:
        return self.percentiles.round(3)._repr_html_()

    def __repr__(self) -> str:
        return repr(self.percentiles.round(3))


def latencies(variants: Mapping[str, Callable] | list[Callable], *, calls: int = 500,
              args_for: Callable[[int], tuple] | None = None, label_for: Callable[[int], str] | None = None,
              warmup: int = 5, max_seconds: float | None = None, check: bool = False,
              equal: Callable[[Any, Any], bool] | None = None) -> Latencies:
    """Time ``calls`` single calls of each variant, interleaved; see the module docstring.

    Variants are labelled as the harness labels them (a dict, or functions named by docstring).
    ``check=True`` compares every variant's answer to call 0 with the first's before any timing
    (``harness.check_answers``: a mismatch names both). It is off by default because a latency run
    often times different requests on purpose (a query and a control, a tenant's page and another's).
    ``max_seconds`` stops early (after at least 100 calls of each variant) once the budget is spent.
    """
    from perflab.harness import check_answers, normalise_variants

    functions = normalise_variants(variants)
    names = list(functions)
    args_for = args_for or (lambda i: ())
    if check:
        check_answers({name: fn(*args_for(0)) for name, fn in functions.items()}, equal)
    for i in range(warmup):
        for fn in functions.values():
            fn(*args_for(i))
    rows = []
    started = time.perf_counter()
    clock = time.perf_counter_ns
    what = f"{len(names)} variant{'s' if len(names) != 1 else ''}"
    with progress.track(calls, unit="calls", what=what) as tracker:
        for i in range(calls):
            args = args_for(i)
            label = label_for(i) if label_for else ""
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                fn = functions[name]
                begin = clock()
                fn(*args)
                rows.append((name, i, label, (clock() - begin) / 1e6))
            tracker.update(i + 1)   # outside the timed calls; cheap unless a line is due
            if max_seconds is not None and i >= 100 and time.perf_counter() - started > max_seconds:
                break
    runs = pd.DataFrame(rows, columns=["variant", "call", "label", "ms"])
    return Latencies(runs=runs, labels=tuple(names))


def fan_out_slow_share(p_slow: float, fan_out) -> np.ndarray:
    """Share of requests that wait for at least one slow call when each fans out to ``fan_out`` calls."""
    return 1 - (1 - p_slow) ** np.asarray(fan_out, dtype=float)
