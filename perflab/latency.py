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

__all__ = ["latencies", "Latencies", "percentile_table", "PERCENTILES", "fan_out_slow_share"]

PERCENTILES = (50, 90, 99, 99.9)


def _label(fn: Callable) -> str:
    doc = (fn.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else getattr(fn, "__name__", "variant")


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
class Latencies:
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

    @property
    def headline(self) -> str:
        """'before: p50 0.05 ms, p99 1.9 ms · after: p50 …' (what the report shows)."""
        table = self.percentiles
        return " · ".join(f"{variant}: p50 {row.p50_ms:.3g} ms, p99 {row.p99_ms:.3g} ms"
                          for variant, row in table.iterrows())

    def plot(self, ax=None, title: str | None = None, save: str | bool | None = None, **kwargs):
        from perflab import plots

        return plots.latency_distribution(self, ax=ax, title=title, save=save, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        table = self.percentiles.reset_index()
        return {"kind": "latencies", "headline": self.headline, "variants": list(self.labels),
                "percentiles": [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                                for row in table.to_dict("records")]}

    def _repr_html_(self) -> str:
        return self.percentiles.round(3)._repr_html_()

    def __repr__(self) -> str:
        return repr(self.percentiles.round(3))


def latencies(variants: Mapping[str, Callable] | list[Callable], *, calls: int = 500,
              args_for: Callable[[int], tuple] | None = None, label_for: Callable[[int], str] | None = None,
              warmup: int = 5, max_seconds: float | None = None) -> Latencies:
    """Time ``calls`` single calls of each variant, interleaved; see the module docstring.

    ``max_seconds`` stops early (after at least 100 calls of each variant) once the budget is spent.
    """
    functions = dict(variants) if isinstance(variants, Mapping) else {_label(fn): fn for fn in variants}
    names = list(functions)
    args_for = args_for or (lambda i: ())
    for i in range(warmup):
        for fn in functions.values():
            fn(*args_for(i))
    rows = []
    started = time.perf_counter()
    clock = time.perf_counter_ns
    for i in range(calls):
        args = args_for(i)
        label = label_for(i) if label_for else ""
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            fn = functions[name]
            begin = clock()
            fn(*args)
            rows.append((name, i, label, (clock() - begin) / 1e6))
        if max_seconds is not None and i >= 100 and time.perf_counter() - started > max_seconds:
            break
    runs = pd.DataFrame(rows, columns=["variant", "call", "label", "ms"])
    return Latencies(runs=runs, labels=tuple(names))


def fan_out_slow_share(p_slow: float, fan_out) -> np.ndarray:
    """Share of requests that wait for at least one slow call when each fans out to ``fan_out`` calls."""
    return 1 - (1 - p_slow) ** np.asarray(fan_out, dtype=float)
