"""The course's one visual style: bars of time per call with CI whiskers, log-log scaling curves.

    res = compare({"EXTRACT": by_extract, "range": by_range}, args=(conn,))
    res.plot(save="dates")          # = plots.bars(res, save="dates") -> build/figures/dates.png
    sweep(...).plot()               # = plots.scaling(...)

Figures are made without pyplot: no backend or display is needed (it works headless, in tests and in
``make run``), scripts do not pile up open figures, and in Jupyter a figure shows once, as a PNG,
when it is a cell's last expression (``res.plot()``); ``fig = res.plot()`` shows nothing until
``fig`` is evaluated. Pass ``ax=`` to draw into a figure of your own (pyplot's or not). Colours are from the Okabe–Ito palette, which stays
distinguishable with the common colour-vision deficiencies: the baseline (usually the "bad" version)
is vermillion, the others blues and greens.
"""
from __future__ import annotations

import io
import math
import re
import textwrap
import unicodedata
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib
import numpy as np
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from perflab import paths
from perflab.units import HOURS_PER, format_bytes, format_seconds, time_unit

if TYPE_CHECKING:  # the harness imports plots lazily (res.plot()); plots never imports the harness
    from perflab.harness import Comparison, Sweep

__all__ = ["style", "bars", "scaling", "save", "variant_colors", "COURSE_STYLE",
           "latency_distribution", "memory_bars", "waterfall", "profile_bars",
           "format_seconds_tick", "seconds_axis", "request_timelines", "against_ideal", "pool_sweep",
           "round_trips", "before_after", "fan_out_share", "lines_by_variant", "histograms"]

BASELINE_COLOR = "#D55E00"  # vermillion: the baseline, usually the version being fixed
OTHER_COLORS = ("#0072B2", "#009E73", "#56B4E9", "#CC79A7", "#000000", "#999999")
INK = "#222222"
MUTED = "#666666"

COURSE_STYLE = {
    "font.family": "DejaVu Sans",   # ships with matplotlib: same glyphs (µ, –) on every machine
    "font.size": 10.5,
    "axes.titlesize": 12.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlepad": 10,
    "axes.labelsize": 10,
    "axes.labelcolor": INK,
    "axes.edgecolor": "#444444",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "axes.prop_cycle": cycler(color=(BASELINE_COLOR, *OTHER_COLORS)),
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.8,
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 10,
    "text.color": INK,
    "legend.frameon": False,
    "legend.fontsize": 9.5,
    "figure.facecolor": "white",
    "figure.dpi": 100,
    "savefig.dpi": 120,
    "savefig.facecolor": "white",
}

SAVE_DPI = 120
# Beyond this spread between the fastest and slowest variant, a linear axis shows the fast ones as
# zero-width slivers; a log axis keeps each visible and its CI readable.
LOG_SCALE_SPREAD = 30
# Wrap widths (characters) that keep a headline and the variant labels inside an 8-inch figure:
# labels take at most ~2 in on the left, leaving ~5.5 in for a bold 10.5 pt headline line.
HEADLINE_WRAP = 62
LABEL_WRAP = 28


def style() -> None:
    """Apply the course style to every later figure (idempotent: it only sets fixed values)."""
    matplotlib.rcParams.update(COURSE_STYLE)


def variant_colors(labels, baseline: str | None = None) -> dict[str, str]:
    """The baseline (default: the first label) in warm vermillion, the others in cool colours."""
    labels = list(labels)
    baseline = labels[0] if baseline is None and labels else baseline
    others = iter(OTHER_COLORS * (1 + len(labels) // len(OTHER_COLORS)))
    return {label: BASELINE_COLOR if label == baseline else next(others) for label in labels}


class CourseFigure(Figure):
    """A Figure that Jupyter displays by itself (as a PNG), with no pyplot backend involved."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=SAVE_DPI, bbox_inches="tight", facecolor="white")
        return buffer.getvalue()


def _new_axes(ax: Axes | None, width: float, height: float) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    figure = CourseFigure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def format_seconds_tick(seconds: float, _position=None) -> str:
    """Tick labels are round numbers: "10 ms", "2.5 µs" (values on bars keep three digits)."""
    if seconds <= 0:
        return "0"
    unit, size = time_unit(seconds)
    return f"{round(seconds / size, 6):g} {unit}"


def seconds_axis(axis) -> None:
    """Label an axis whose values are seconds in round units: ``plots.seconds_axis(ax.yaxis)``."""
    axis.set_major_formatter(FuncFormatter(format_seconds_tick))


_format_tick = format_seconds_tick  # the old private names, kept working
_seconds_axis = seconds_axis


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)) or text


def _maybe_save(figure: Figure, target: str | bool | None, fallback_name: str) -> None:
    if target:
        save(figure, fallback_name if target is True else str(target))


def bars(comparison: Comparison, ax: Axes | None = None, title: str | None = None,
         save: str | bool | None = None) -> Figure:
    """Horizontal bars: median time per call of each variant, whiskers for its 95% CI, the ratio.

    ``save``: a file name (see :func:`save`), or True to name the file after the title.
    """
    summary = comparison.summary
    labels = list(summary.variant)
    medians = summary.median_ms.to_numpy() / 1e3
    lows = summary.ci_low_ms.to_numpy() / 1e3
    highs = summary.ci_high_ms.to_numpy() / 1e3
    colors = variant_colors(labels, comparison.baseline)
    headline = comparison.headline

    with matplotlib.rc_context(COURSE_STYLE):
        figure, ax = _new_axes(ax, 8.0, 1.6 + 0.55 * len(labels))
        rows = np.arange(len(labels))
        # max(): a zero time (a timer too coarse for the call) must not divide by zero.
        smallest = max(lows.min(), 1e-12)
        use_log = highs.max() / smallest > LOG_SCALE_SPREAD
        # On a log axis a bar cannot start at 0: start every bar at the same point below the data.
        start = smallest / 3 if use_log else 0.0
        ax.barh(rows, medians - start, left=start, height=0.62,
                color=[colors[label] for label in labels], alpha=0.9, zorder=2)
        ax.errorbar(medians, rows, xerr=[medians - lows, highs - medians], fmt="none",
                    ecolor=INK, elinewidth=1.2, capsize=4, capthick=1.2, zorder=3)
        if use_log:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, numticks=12))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(start, highs.max() * 6)   # room on the right for the value labels
        else:
            ax.set_xlim(0, highs.max() * 1.28)
        seconds_axis(ax.xaxis)
        for row, median, high in zip(rows, medians, highs):
            ax.annotate(format_seconds(median), (high, row), xytext=(6, 0), textcoords="offset points",
                        va="center", ha="left", fontsize=10, color=INK, zorder=4)
        ax.set_yticks(rows, [_wrap(label, LABEL_WRAP) for label in labels])
        ax.tick_params(axis="y", length=0)
        ax.set_ylim(len(labels) - 0.5, -0.5)   # first variant on top, in the order given
        ax.grid(axis="y", visible=False)
        ax.spines["left"].set_visible(False)

        checked = "" if comparison.answers_checked else " · answers NOT checked"
        scale = " · log scale" if use_log else ""
        ax.set_xlabel(f"time per call: median of {comparison.rounds} interleaved rounds, "
                      f"whiskers 95% CI · preset {comparison.preset.name}{scale}{checked}",
                      color=MUTED, fontsize=9)
        headline_lines = len(_wrap(headline, HEADLINE_WRAP).splitlines()) if headline else 0
        ax.set_title(title or "Median time per call", pad=10 + 15 * headline_lines)
        if headline:
            ratio = comparison.ratio()
            ax.annotate(_wrap(headline, HEADLINE_WRAP), xy=(0, 1), xycoords="axes fraction", xytext=(0, 7),
                        textcoords="offset points", ha="left", va="bottom", fontsize=10.5,
                        color=colors[ratio.fast] if ratio.clear else MUTED,
                        fontweight="bold" if ratio.clear else "normal")
    _maybe_save(figure, save, title or headline or "comparison")
    return figure


def _format_count(value: float, _position=None) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def scaling(sweep: Sweep, ax: Axes | None = None, title: str | None = None,
            save: str | bool | None = None, xlabel: str = "n (input size)") -> Figure:
    """Log-log median time per call against n, CI bands, each line labelled with its fitted slope.

    The slope of a straight line on log-log axes is the empirical order of growth: ~0 constant,
    ~1 linear, ~2 quadratic. Faint dashed guides show slopes 0 and 1 for comparison.
    """
    summary = sweep.summary
    slopes = sweep.slopes
    colors = variant_colors(sweep.labels)

    with matplotlib.rc_context(COURSE_STYLE):
        figure, ax = _new_axes(ax, 7.5, 4.6)
        for label in sweep.labels:
            rows = summary[summary.variant == label]
            if rows.empty:
                continue
            n = rows.n.to_numpy(float)
            median = rows.median_ms.to_numpy() / 1e3
            slope = slopes[label]
            # "-0.00" would suggest a meaningful sign; a flat line has slope 0.00.
            slope_text = f"{slope:.2f}".replace("-0.00", "0.00")
            legend = f"{label} · slope {slope_text}" if math.isfinite(slope) else f"{label} · one size"
            if label in sweep.skipped:
                legend += (f", not run from n={_format_count(sweep.skipped[label])} "
                           f"(over {sweep.max_ms:g} ms)")
            ax.fill_between(n, rows.ci_low_ms.to_numpy() / 1e3, rows.ci_high_ms.to_numpy() / 1e3,
                            color=colors[label], alpha=0.18, linewidth=0, zorder=2)
            ax.plot(n, median, marker="o", markersize=5, linewidth=2, color=colors[label],
                    label=legend, zorder=3)
        ax.set_xscale("log")
        ax.set_yscale("log")
        if not summary.empty:
            first = summary[summary.n == summary.n.min()]
            _reference_slopes(ax, summary.n.min(), summary.n.max(), first.median_ms.max() / 1e3,
                              summary.ci_low_ms.min() / 1e3, summary.ci_high_ms.max() / 1e3)
        seconds_axis(ax.yaxis)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        if "hour" in xlabel.lower() and not summary.empty:
            _calendar_axis(ax, summary.n.min(), summary.n.max())
        else:
            ax.xaxis.set_major_formatter(FuncFormatter(_format_count))
            ax.set_xticks(sorted(set(summary.n)) if len(set(summary.n)) <= 8 else ax.get_xticks())
        ax.grid(which="major", axis="both")
        ax.set_xlabel(f"{xlabel}, log scale")
        ax.set_ylabel("median time per call (log scale)")
        ax.set_title(title or "How time grows with n")
        ax.legend(loc="best")
        ax.annotate(f"slope of a line ≈ order of growth: 0 constant, 1 linear, 2 quadratic · "
                    f"bands 95% CI · preset {sweep.preset.name}",
                    xy=(0, 0), xycoords="figure fraction", xytext=(6, 4), textcoords="offset points",
                    fontsize=8.5, color=MUTED)
    _maybe_save(figure, save, title or "scaling")
    return figure


def _calendar_axis(ax: Axes, low: float, high: float) -> None:
    """An axis of windows in hours, ticked where people think in time: 1 hour, 1 day, 1 week, 1 month, 1 year."""
    ticks = [(hours, f"1 {name}") for name, hours in HOURS_PER.items() if low / 1.3 <= hours <= high * 1.3]
    for hours in sorted({low, high}):   # the measured ends, when they are not a calendar span
        if all(abs(math.log(hours / t)) > 0.35 for t, _ in ticks):
            ticks.append((hours, _hours_label(hours)))
    ticks.sort()
    ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks])


def _hours_label(hours: float) -> str:
    for name, size in reversed(list(HOURS_PER.items())):
        if hours >= size:
            value = hours / size
            return f"{value:.3g} {name}{'s' if value >= 1.5 else ''}"
    return f"{hours * 60:.3g} min"


def _reference_slopes(ax: Axes, n_min: float, n_max: float, anchor: float, y_min: float,
                      y_max: float) -> None:
    """Faint guides of slope 0 and 1 from the highest first point, within the data's limits.

    Starting from the slowest variant at the smallest n, a line that bends above the slope-1 guide
    grows faster than linearly, one that follows it is linear, one that stays flat is constant.
    """
    pad = 1.6
    x_limits = (n_min / 1.3, n_max * 1.3)
    y_limits = (y_min / pad, y_max * pad)
    ns = np.geomspace(*x_limits, 50)
    for slope in (0, 1):
        ys = anchor * (ns / n_min) ** slope
        ax.plot(ns, ys, linestyle=(0, (4, 4)), linewidth=1, color="#b0b0b0", zorder=1)
        inside = ys <= y_limits[1]
        x_end, y_end = ns[inside][-1], ys[inside][-1]
        ax.annotate(f"slope {slope}", (x_end, y_end), xytext=(-4, 3), textcoords="offset points",
                    ha="right", va="bottom", fontsize=8.5, color="#999999")
    ax.set_xlim(*x_limits)
    ax.set_ylim(*y_limits)


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    stem = re.sub(r"\.png$", "", ascii_name.strip(), flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:80].strip("-")
    if not slug:
        raise ValueError(f"cannot make a file name from {name!r}: use letters or digits")
    return slug


FIGURE_NOTES = "figure-notes"  # inside BUILD_DIR: one JSON per saved figure (whose it is, its title)


def figure_title(fig: Figure) -> str | None:
    """The figure's own title, for its caption: the suptitle and every panel's title, in order."""
    parts = []
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None and suptitle.get_text().strip():
        parts.append(" ".join(suptitle.get_text().split()))
    for ax in fig.axes:
        for loc in ("center", "left", "right"):
            text = " ".join(ax.get_title(loc=loc).split())
            if text and text not in parts:
                parts.append(text)
    return " · ".join(parts) or None


def save(fig: Figure, name: str) -> Path:
    """Write ``fig`` as ``<FIGURES_DIR>/<slug of name>.png`` (created if needed); return the path.

    Beside it, ``<BUILD_DIR>/figure-notes/<slug>.json`` records which notebook saved it (the
    ``PERFLAB_NOTEBOOK`` that ``make run`` sets), its title and when, so the report shows every
    figure under its topic, in the order the story made it. ``fig.perflab_path`` remembers the file.
    """
    directory = Path(paths.FIGURES_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{_slug(name)}.png"
    fig.savefig(path, dpi=SAVE_DPI, bbox_inches="tight", facecolor="white")
    fig.perflab_path = path
    note = {"file": path.name, "notebook": os.environ.get("PERFLAB_NOTEBOOK") or None,
            "title": figure_title(fig), "name": name, "sequence": time.time_ns()}
    notes = Path(paths.BUILD_DIR) / FIGURE_NOTES
    try:
        notes.mkdir(parents=True, exist_ok=True)
        (notes / f"{path.stem}.json").write_text(json.dumps(note, ensure_ascii=False), encoding="utf-8")
    except OSError:  # a read-only build folder must not stop a notebook; the file name still places it
        pass
    return path


# --------------------------------------------------------------------------------------------------
# Before and after a fix (topic 04); a tail through a fan-out (topic 03)
# --------------------------------------------------------------------------------------------------

def before_after(before, after, marked=(), title: str | None = None, xlabel: str = "ms, log scale",
                 save: str | bool | None = None) -> Figure:
    """Paired horizontal bars per row: ``before`` (vermillion) and ``after`` (blue), on a log x axis.

    ``before``, ``after``: mappings (or Series) of the same row names to a positive amount, in the order
    drawn top to bottom (``before``'s); rows named in ``marked`` get "← fixed" after their name. A log
    axis keeps a fixed row's tiny "after" bar visible beside its big "before" one.
    """
    names = list(before.keys())
    with matplotlib.rc_context(COURSE_STYLE):
        figure, ax = _new_axes(None, 8.5, 1.4 + 0.3 * len(names))
        ys = np.arange(len(names))
        ax.barh(ys - 0.2, [before[n] for n in names], 0.4, color=BASELINE_COLOR, label="before")
        ax.barh(ys + 0.2, [after.get(n, 0) for n in names], 0.4, color=OTHER_COLORS[0], label="after")
        ax.set_yticks(ys, [f"{n}{'  ← fixed' if n in marked else ''}" for n in names])
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", visible=False)
        if title:
            ax.set_title(title)
        ax.legend(loc="lower right")
    _maybe_save(figure, save, title or "before and after")
    return figure


def fan_out_share(p_slow: float, fan_outs, simulated, requests: int, mark: int | None = None,
                  title: str | None = None, save: str | bool | None = None) -> Figure:
    """The share of requests with at least one slow call, ``1 − (1 − p)^k``, against the fan-out k.

    The formula is drawn as a line from 1 to ``max(fan_outs)``, ``simulated`` (one share per fan-out,
    each from ``requests`` simulated requests) as points; ``mark``: a k to annotate with its share.
    """
    from perflab.latency import fan_out_slow_share  # the one formula, shared with the notebook's numbers

    fan_outs = np.asarray(fan_outs)
    ks = np.arange(1, fan_outs.max() + 1)

    def share(k):
        return fan_out_slow_share(p_slow, k)

    with matplotlib.rc_context(COURSE_STYLE):
        figure, ax = _new_axes(None, 7.5, 4.2)
        ax.plot(ks, share(ks), color=OTHER_COLORS[0], linewidth=2, label=f"1 − {1 - p_slow:g}^k")
        ax.plot(fan_outs, simulated, "o", color=BASELINE_COLOR, label=f"simulated ({requests:,} requests each)")
        if mark is not None:
            ax.annotate(f"k = {mark}: {float(share(mark)):.0%} of requests slow", (mark, float(share(mark))),
                        xytext=(10, -25), textcoords="offset points", arrowprops={"arrowstyle": "->", "color": INK})
        ax.set_xscale("log")
        ax.set_xticks(fan_outs, [str(k) for k in fan_outs])
        ax.minorticks_off()
        ax.set_xlabel("calls per request (fan-out k), log scale")
        ax.set_ylabel("share of requests with ≥ 1 slow call")
        ax.set_title(title or f"When {p_slow:.0%} of calls are slow, how many requests are?")
        ax.legend(loc="upper left")
    _maybe_save(figure, save, title or "fan-out share")
    return figure


# --------------------------------------------------------------------------------------------------
# Small multiples: one line per variant, one panel per measured column; overlaid histograms (topic 07)
# --------------------------------------------------------------------------------------------------

def lines_by_variant(table, x: str, panels: dict, xlabel: str | None = None, variant: str = "variant",
                     save: str | bool | None = None) -> Figure:
    """One panel per ``panels`` column, side by side; in each, one line per variant against ``x``.

    ``panels``: ``{column: (title, ylabel)}``; variants are coloured in the order they first appear (the
    first in the baseline colour); the legend is on the first panel.
    """
    labels = list(dict.fromkeys(table[variant]))
    colors = variant_colors(labels)
    with matplotlib.rc_context(COURSE_STYLE):
        figure = CourseFigure(figsize=(4.5 * len(panels), 3.6), layout="constrained")
        axes = np.atleast_1d(figure.subplots(1, len(panels)))
        for ax, (column, (title, ylabel)) in zip(axes, panels.items()):
            for label in labels:
                rows = table[table[variant] == label]
                ax.plot(rows[x], rows[column], marker="o", color=colors[label], label=label)
            ax.set_title(title)
            ax.set_xlabel(xlabel or x)
            ax.set_ylabel(ylabel)
        axes[0].legend()
    _maybe_save(figure, save, " · ".join(title for title, _ in panels.values()))
    return figure


def histograms(samples: dict, bins, xlabel: str, ylabel: str, title: str | None = None,
               save: str | bool | None = None) -> Figure:
    """Overlaid histograms of ``{label: values}`` on shared ``bins`` (the first label in the baseline colour)."""
    colors = variant_colors(list(samples))
    with matplotlib.rc_context(COURSE_STYLE):
        figure, ax = _new_axes(None, 8.0, 3.2)
        for label, values in samples.items():
            ax.hist(values, bins=bins, alpha=0.75, color=colors[label], label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.legend()
    _maybe_save(figure, save, title or "histograms")
    return figure


# --------------------------------------------------------------------------------------------------
# Through a network (topic 02)
# --------------------------------------------------------------------------------------------------

def round_trips(grid, variants, title: str, note: str | None = None, save: str | bool | None = None) -> Figure:
    """Grouped bars of time per call: one panel per ``N``, one group per RTT, one bar per variant (log y).

    ``grid``: a table with columns ``rtt_ms``, ``N``, ``variant``, ``seconds`` (the bar), ``fastest`` and
    ``slowest`` (the whisker) and ``how`` (``"predicted"`` bars are hatched and faint); ``variants``:
    the labels, in the order of the bars (the first in the baseline colour).
    """
    variants = list(variants)
    rtts = sorted(set(grid.rtt_ms))
    sizes = sorted(set(grid.N))
    colors = variant_colors(variants)
    width = 0.8 / len(variants)
    with matplotlib.rc_context(COURSE_STYLE):
        figure = CourseFigure(figsize=(4.75 * len(sizes), 4.2), layout="constrained")
        axes = np.atleast_1d(figure.subplots(1, len(sizes), sharey=True))
        for ax, n in zip(axes, sizes):
            for index, variant in enumerate(variants):
                rows = grid[(grid.N == n) & (grid.variant == variant)]
                xs = [rtts.index(r) + (index - (len(variants) - 1) / 2) * width for r in rows.rtt_ms]
                drawn = ax.bar(xs, rows.seconds, width, color=colors[variant], label=variant, alpha=0.9)
                ax.errorbar(xs, rows.seconds, yerr=[rows.seconds - rows.fastest, rows.slowest - rows.seconds],
                            fmt="none", ecolor=INK, elinewidth=1, capsize=2)
                for bar, how in zip(drawn, rows.how):
                    if how == "predicted":
                        bar.set_hatch("//")
                        bar.set_alpha(0.45)
            ax.set_yscale("log")
            ax.set_xticks(range(len(rtts)), [f"{r:g} ms" for r in rtts])
            ax.set_xlabel("network round trip (RTT)")
            ax.set_title(f"N = {n} orders", fontsize=11)
            seconds_axis(ax.yaxis)
        axes[0].set_ylabel("time per page (log scale)")
        axes[0].legend(loc="upper left")
        figure.suptitle(title, fontweight="bold", x=0.01, ha="left")
        if note:
            figure.text(0.01, -0.02, note, fontsize=8.5, color=MUTED)
    _maybe_save(figure, save, title)
    return figure


# --------------------------------------------------------------------------------------------------
# Fan-outs against their ideal (topic 06)
# --------------------------------------------------------------------------------------------------

def request_timelines(intervals: dict, titles: dict | None = None, suptitle: str | None = None,
                      save: str | bool | None = None) -> Figure:
    """One panel per variant, one line per request from its start to its end on the server.

    ``intervals``: ``{variant: [(start_s, end_s), ...]}`` (any clock; each panel starts at its first
    request); ``titles``: a panel title per variant (default: the variant). The first variant is the
    baseline colour; every panel shares the x axis, so staircases and columns compare at a glance.
    """
    labels = list(intervals)
    colors = variant_colors(labels)
    ordered = {label: sorted(intervals[label]) for label in labels}
    longest = max(end - spans[0][0] for spans in ordered.values() for _, end in spans)
    with matplotlib.rc_context(COURSE_STYLE):
        figure = CourseFigure(figsize=(9, 1.2 + 1.35 * len(labels)), layout="constrained")
        axes = np.atleast_1d(figure.subplots(len(labels), 1, sharex=True))
        for ax, label in zip(axes, labels):
            spans = ordered[label]
            first = spans[0][0]
            for row, (start, end) in enumerate(spans):
                ax.plot([(start - first) * 1e3, (end - first) * 1e3], [row, row], color=colors[label], lw=2.2,
                        solid_capstyle="butt")
            ax.set_ylim(len(spans), -1)
            ax.set_yticks([])
            ax.set_ylabel("request", fontsize=9)
            ax.set_title((titles or {}).get(label, label), fontsize=10.5)
            ax.grid(axis="y", visible=False)
        axes[-1].set_xlim(0, longest * 1e3 * 1.02)
        axes[-1].set_xlabel("ms since the first request reached the server")
        if suptitle:
            figure.suptitle(suptitle, fontsize=10, color=MUTED)
    _maybe_save(figure, save, suptitle or "request timelines")
    return figure


# Variants that coincide (two bounded fan-outs) stay visible: later ones thinner, with other markers.
_IDEAL_STYLES = [("o", 7, 2.6), ("s", 6, 2.2), ("D", 6, 2.2), ("o", 3.5, 1.2), ("^", 3.5, 1.0), ("v", 3.5, 1.0)]


def against_ideal(table, x: str, xlabel: str, title: str, ideal_label: str, baseline: str | None = None,
                  label_shares: bool = False, note: str | None = None, save: str | bool | None = None) -> Figure:
    """Left: median wall time (solid) against its ideal (dashed) per variant; right: the server's max in flight.

    ``table`` has one row per variant and ``x`` value, with columns ``variant``, ``x``, ``median ms``,
    ``ideal ms``, ``max in flight (server)`` and, for ``label_shares``, ``share of ideal`` (each
    point labelled with it). Both axes are log-log; ``note`` goes under the figure as its suptitle.
    """
    labels = list(dict.fromkeys(table.variant))
    colors = variant_colors(labels, baseline=baseline)  # a baseline not among the labels: all cool colours
    styles = dict(zip(labels, _IDEAL_STYLES * (1 + len(labels) // len(_IDEAL_STYLES))))
    with matplotlib.rc_context(COURSE_STYLE):
        figure = CourseFigure(figsize=(11, 4.4), layout="constrained")
        left, right = figure.subplots(1, 2)
        for label in labels:
            rows = table[table.variant == label]
            marker, size, width = styles[label]
            left.plot(rows[x], rows["median ms"] / 1e3, marker=marker, markersize=size, lw=width,
                      color=colors[label], label=label, zorder=3)
            left.plot(rows[x], rows["ideal ms"] / 1e3, ls=(0, (4, 3)), lw=1.3, color=colors[label], alpha=0.8,
                      zorder=2)
            right.plot(rows[x], rows["max in flight (server)"], marker=marker, markersize=size, lw=width,
                       color=colors[label], label=label, zorder=3)
            if label_shares:
                for _, row in rows.iterrows():
                    left.annotate(f"{row['share of ideal']:.0%} of ideal", (row[x], row["median ms"] / 1e3),
                                  xytext=(6, 4), textcoords="offset points", fontsize=8.5, color=colors[label])
        left.plot([], [], ls=(0, (4, 3)), lw=1.3, color=MUTED, label=ideal_label)  # legend entry only
        xs = np.array(sorted(set(table[x])), float)
        right.plot(xs, xs, color="#bbbbbb", lw=1, ls=":", zorder=1, label=f"max in flight = {x}")
        for ax in (left, right):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(xs, [f"{v:g}" for v in xs])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel(xlabel)
        seconds_axis(left.yaxis)
        left.set_ylabel("wall time, median (log)")
        left.set_title(title)
        left.legend(loc="best", fontsize=8.5)
        right.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        right.set_ylabel("requests in flight at once, max (server's count)")
        right.set_title("What the server saw")
        right.legend(loc="upper left", fontsize=8.5)
        if note:
            figure.suptitle(note, fontsize=9, color=MUTED)
    _maybe_save(figure, save, title)
    return figure


# --------------------------------------------------------------------------------------------------
# Pool size sweep (topic 05)
# --------------------------------------------------------------------------------------------------

def pool_sweep(saturation: dict, steady: dict, knee: int, rule: int, rate: float, note: str | None = None,
               save: str | bool | None = None) -> Figure:
    """Left: throughput at saturation vs pool size; right: p99 and p50 at a fixed rate. Both log2 in x.

    ``saturation`` and ``steady``: ``{pool size: {"throughput"/"p99_ms"/"p50_ms": median of runs,
    "<key>_low": min, "<key>_high": max}}`` (whiskers min–max). ``knee`` (dashed) and ``rule``
    (dotted, the article's (cores × 2) + spindles) are marked on both panels.
    """
    sizes = np.array(sorted(saturation))

    def whiskers(results, key):  # median with min-max of the runs
        values = np.array([results[s][key] for s in sizes])
        return values, [values - [results[s][f"{key}_low"] for s in sizes],
                        [results[s][f"{key}_high"] for s in sizes] - values]

    with matplotlib.rc_context(COURSE_STYLE):
        figure = CourseFigure(figsize=(10, 4.2), layout="constrained")
        left, right = figure.subplots(1, 2)
        values, spread = whiskers(saturation, "throughput")
        left.errorbar(sizes, values, yerr=spread, marker="o", lw=2, color=OTHER_COLORS[0], capsize=3)
        left.set_ylabel("requests per second (saturated)")
        left.set_title("Throughput vs pool size")
        values, spread = whiskers(steady, "p99_ms")
        right.errorbar(sizes, values, yerr=spread, marker="o", lw=2, color=BASELINE_COLOR, label="p99", capsize=3)
        right.plot(sizes, [steady[s]["p50_ms"] for s in sizes], marker="o", lw=1.5, color=OTHER_COLORS[1],
                   label="p50")
        right.set_yscale("log")
        right.set_ylabel(f"latency at {rate:.0f} req/s, ms (log)")
        right.set_title("Latency vs pool size")
        right.legend()
        for ax in (left, right):
            ax.set_xscale("log", base=2)
            ax.set_xticks(sizes, [str(s) for s in sizes])
            ax.set_xlabel("pool size (connections)")
            ax.axvline(knee, color=INK, ls="--", lw=1)
            ax.axvline(rule, color="#999999", ls=":", lw=1.5)
            ax.annotate(f" knee: {knee}", (knee, 0.96), xycoords=("data", "axes fraction"), fontsize=9)
            ax.annotate(f" (cores × 2) + 1 = {rule}", (rule, 0.88), xycoords=("data", "axes fraction"),
                        fontsize=9, color=MUTED)
        if note:
            figure.suptitle(note, fontsize=10, color=MUTED)
    _maybe_save(figure, save, "pool size sweep")
    return figure


# --------------------------------------------------------------------------------------------------
# Memory and step-by-step savings (topics 09 and 10)
# --------------------------------------------------------------------------------------------------

def _format_bytes_tick(value: float, _position=None) -> str:
    for size, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(value) >= size:
            return f"{round(value / size, 3):g} {unit}"
    return f"{value:g} B"


def memory_bars(comparison, ax: Axes | None = None, title: str | None = None,
                save: str | bool | None = None) -> Figure:
    """Horizontal bars of peak memory per variant (a ``perflab.memory.MemoryComparison``), log scale
    when the spread is large, the headline ("stream: 38x less memory at peak ...") above."""
    labels = [p.label for p in comparison.peaks]
    values = np.array([max(p.peak_bytes, 1) for p in comparison.peaks], float)
    colors = variant_colors(labels)
    with matplotlib.rc_context(COURSE_STYLE):
        figure, ax = _new_axes(ax, 8.0, 1.6 + 0.55 * len(labels))
        rows = np.arange(len(labels))
        use_log = values.max() / values.min() > LOG_SCALE_SPREAD
        start = values.min() / 3 if use_log else 0.0
        ax.barh(rows, values - start, left=start, height=0.62, color=[colors[l] for l in labels], alpha=0.9, zorder=2)
        if use_log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlim(start, values.max() * 6)
        else:
            ax.set_xlim(0, values.max() * 1.28)
        ax.xaxis.set_major_formatter(FuncFormatter(_format_bytes_tick))
        for row, value in zip(rows, values):
            ax.annotate(format_bytes(value), (value, row), xytext=(6, 0), textcoords="offset points",
                        va="center", ha="left", fontsize=10, color=INK)
        ax.set_yticks(rows, [_wrap(label, LABEL_WRAP) for label in labels])
        ax.tick_params(axis="y", length=0)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.grid(axis="y", visible=False)
        ax.spines["left"].set_visible(False)
        ax.set_xlabel("peak memory allocated during one call (tracemalloc)" + (" · log scale" if use_log else ""),
                      color=MUTED, fontsize=9)
        headline = comparison.headline if len(labels) > 1 else None
        lines = len(_wrap(headline, HEADLINE_WRAP).splitlines()) if headline else 0
        ax.set_title(title or "Peak memory per call", pad=10 + 15 * lines)
        if headline:
            best = min(comparison.peaks[1:], key=lambda p: p.peak_bytes).label
            ax.annotate(_wrap(headline, HEADLINE_WRAP), xy=(0, 1), xycoords="axes fraction", xytext=(0, 7),
                        textcoords="offset points", ha="left", va="bottom", fontsize=10.5,
                        color=colors[best], fontweight="bold")
    _maybe_save(figure, save, title or "memory")
    return figure


def waterfall(steps, ax: Axes | None = None, title: str | None = None, save: str | bool | None = None,
              unit: str = "seconds", ylabel: str | None = None) -> Figure:
    """A waterfall of savings: the starting value, then each fix as a step down (or up), then the end.

    ``steps`` is a list of ``(label, value after that step)``, the first being the starting point,
    e.g. ``[("original", 0.84), ("JOIN instead of N+1", 0.12), ("set lookup", 0.09)]``.
    ``unit`` is ``"seconds"`` or ``"bytes"`` (axis and labels formatted accordingly).
    """
    labels = [label for label, _ in steps]
    values = np.array([value for _, value in steps], float)
    fmt = format_seconds if unit == "seconds" else format_bytes
    with matplotlib.rc_context(COURSE_STYLE):
        figure, ax = _new_axes(ax, 8.0, 4.4)
        x = np.arange(len(values) + 1)
        # First bar: the start, in the baseline colour. Then one floating bar per change.
        ax.bar(x[0], values[0], width=0.62, color=BASELINE_COLOR, alpha=0.9, zorder=2)
        ax.annotate(fmt(values[0]), (x[0], values[0]), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=9.5)
        for i in range(1, len(values)):
            before, after = values[i - 1], values[i]
            saved = before - after
            color = OTHER_COLORS[1] if saved >= 0 else BASELINE_COLOR
            ax.bar(x[i], after - before, bottom=before, width=0.62, color=color, alpha=0.85, zorder=2)
            ax.plot([x[i - 1] - 0.31, x[i] + 0.31], [before, before], color=MUTED, linewidth=0.8, zorder=1)
            share = saved / values[0] * 100 if values[0] else 0
            ax.annotate(f"{'−' if saved >= 0 else '+'}{fmt(abs(saved))}\n({abs(share):.0f}% of start)",
                        (x[i], max(before, after)), xytext=(0, 3), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8.5, color=INK)
        ax.bar(x[-1], values[-1], width=0.62, color=OTHER_COLORS[0], alpha=0.9, zorder=2)
        factor = values[0] / values[-1] if values[-1] > 0 else math.inf
        ax.annotate(f"{fmt(values[-1])}\n{factor:,.1f}x less", (x[-1], values[-1]), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=9.5, fontweight="bold")
        ax.set_xticks(x, [_wrap(label, 14) for label in labels] + ["after all fixes"], fontsize=8.5)
        ax.set_ylim(0, values.max() * 1.25)
        if unit == "seconds":
            seconds_axis(ax.yaxis)
        else:
            ax.yaxis.set_major_formatter(FuncFormatter(_format_bytes_tick))
        ax.grid(axis="x", visible=False)
        ax.set_ylabel(ylabel or ("median time per call" if unit == "seconds" else "peak memory per call"))
        ax.set_title(title or "What each fix saved")
    _maybe_save(figure, save, title or "waterfall")
    return figure


# --------------------------------------------------------------------------------------------
# Latency distributions (additive: topic 03)
# --------------------------------------------------------------------------------------------

def latency_distribution(latencies, ax: Axes | None = None, title: str | None = None,
                         save: str | bool | None = None, percentiles=(50, 99),
                         baseline: str | None = None) -> Figure:
    """ECDF of single-call latencies per variant (log time axis), with p50 and p99 marked.

    ``latencies``: a :class:`perflab.latency.Latencies` or a tidy frame with ``variant`` and ``ms``.
    Read it as "the share of calls at most this slow"; the tail is the top of each curve.
    """
    runs = latencies.runs if hasattr(latencies, "runs") else latencies
    labels = list(dict.fromkeys(runs.variant))
    colors = variant_colors(labels, baseline)
    markers = {50: "o", 90: "s", 99: "D", 99.9: "^"}
    with matplotlib.rc_context(COURSE_STYLE):
        figure, ax = _new_axes(ax, 8.0, 4.4)
        for index, label in enumerate(labels):
            ms = np.sort(runs[runs.variant == label].ms.to_numpy())
            seconds = ms / 1e3
            share = np.arange(1, len(ms) + 1) / len(ms)
            (line,) = ax.step(seconds, share, where="post", color=colors[label], linewidth=2, label=label, zorder=3)
            for p in percentiles:
                value = np.percentile(seconds, p)
                ax.plot([value], [p / 100], marker=markers.get(p, "o"), color=colors[label], markersize=7,
                        markeredgecolor="white", zorder=4)
            # The percentiles go in the legend, not beside the markers: close markers of several
            # variants made their labels overlap (topic 03's fan-out and keyset ECDFs).
            line.set_label(f"{label} · " + ", ".join(
                f"p{p:g} {format_seconds(np.percentile(seconds, p))}" for p in percentiles))
        for p in percentiles:
            ax.axhline(p / 100, color="#bbbbbb", linewidth=0.8, linestyle=(0, (3, 3)), zorder=1)
        ax.set_xscale("log")
        seconds_axis(ax.xaxis)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("share of calls at most this slow")
        calls = runs.groupby("variant", sort=False).size()
        per_variant = f"{calls.iloc[0]:,}" if calls.nunique() == 1 else ", ".join(f"{n:,}" for n in calls)
        ax.set_xlabel("latency of one call (log scale) · ECDF of single calls "
                      f"({per_variant} per variant) · markers: "
                      + ", ".join(f"p{p:g}" for p in percentiles), color=MUTED, fontsize=9)
        ax.set_title(title or "Latency distribution")
        # Below the axes, one entry per line: never over the curves, whatever their shape.
        ax.legend(loc="upper left", bbox_to_anchor=(0, -0.16), ncol=1 if len(labels) > 2 else len(labels),
                  fontsize=9.5, handlelength=1.8)
    _maybe_save(figure, save, title or "latency distribution")
    return figure


def profile_bars(table, ax: Axes | None = None, title: str | None = None, save: str | bool | None = None,
                 total: float | None = None) -> Figure:
    """A cProfile table as bars: cumulative time (pale) with own time (solid) inside, per function.

    ``table`` has the columns of ``perflab.profiling.Profile.table()``: function, calls, own s,
    cumulative s. A long pale bar with a short solid one is a function the time passes *through*; a
    solid bar is where it is spent.
    """
    labels = [_wrap(str(f), 44) for f in table["function"]]
    cumulative = table["cumulative s"].to_numpy(float)
    own = table["own s"].to_numpy(float)
    calls = table["calls"].to_numpy()
    with matplotlib.rc_context(COURSE_STYLE):
        figure, ax = _new_axes(ax, 8.5, 1.4 + 0.42 * len(labels))
        rows = np.arange(len(labels))
        ax.barh(rows, cumulative, height=0.7, color=OTHER_COLORS[2], alpha=0.45, zorder=2, label="cumulative time")
        ax.barh(rows, own, height=0.4, color=BASELINE_COLOR, alpha=0.9, zorder=3, label="own time")
        for row, value, n in zip(rows, cumulative, calls):
            share = f" · {value / total:.0%}" if total else ""
            ax.annotate(f"{format_seconds(value)}{share} · {n:,} calls", (value, row), xytext=(5, 0),
                        textcoords="offset points", va="center", fontsize=8.5, color=INK)
        ax.set_yticks(rows, labels, fontsize=8.5)
        ax.tick_params(axis="y", length=0)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_xlim(0, cumulative.max() * 1.45 if len(cumulative) else 1)
        seconds_axis(ax.xaxis)
        ax.grid(axis="y", visible=False)
        ax.spines["left"].set_visible(False)
        ax.legend(loc="lower right")
        ax.set_xlabel("seconds in one profiled call (cProfile): cumulative includes callees, own does not",
                      color=MUTED, fontsize=9)
        ax.set_title(title or "Where the time goes")
    _maybe_save(figure, save, title or "profile")
    return figure
