"""Units and number formatting shared by the harness, the plots, the results and the report.

Every number a learner reads goes through here, so the course prints numbers one way: times in the
unit that makes them read 1-999 (``58.1 µs``), factors with the precision their size deserves
(``212x``, ``9.5x``, ``1.07x``), bytes in decimal units, and any other float with at most
``MAX_DIGITS`` significant digits. This module imports nothing from perflab (the harness and the
plots both import it; neither imports the other at module level).
"""
from __future__ import annotations

import math
import re
from numbers import Integral, Real
from typing import Any

__all__ = ["time_unit", "format_seconds", "format_factor", "format_bytes", "format_disk", "format_number",
           "format_value", "tame_numbers", "MAX_DIGITS", "HOURS_PER"]

MAX_DIGITS = 4  # no float in a report or a headline shows more significant digits than this

_TIME_UNITS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))

# Calendar spans in hours, for axes whose values are windows of time (topic 01's window sweep).
HOURS_PER = {"hour": 1, "day": 24, "week": 24 * 7, "month": 24 * 30.44, "year": 24 * 365.25}


def time_unit(seconds: float) -> tuple[str, float]:
    """The unit (name, size in seconds) in which ``seconds`` reads as a number from 1 to 999."""
    magnitude = abs(seconds)
    for unit, size in _TIME_UNITS:
        if magnitude >= size:
            return unit, size
    return _TIME_UNITS[-1]


def _three_digits(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_seconds(seconds: float, unit: str | None = None) -> str:
    """``0.0000581`` -> ``"58.1 µs"``; ``unit`` forces one of s, ms, µs, ns."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    if unit is None:
        unit, size = time_unit(seconds)
    else:
        size = dict(_TIME_UNITS)[unit]
    return f"{_three_digits(seconds / size)} {unit}"


def format_factor(value: float, precision_of: float | None = None) -> str:
    """A speed-up factor: 2 decimals near 1 (``1.07``), 1 under 100 (``9.5``), integers above.

    ``precision_of`` picks the decimals from another number, so a CI is printed as precisely as the
    estimate it belongs to ("2.0x (95% CI 1.6x–2.5x)", not "1.60x–2.5x").
    """
    if value is None or not math.isfinite(value):
        return "n/a"
    reference = abs(value if precision_of is None else precision_of)
    if reference < 2:
        return f"{value:.2f}"
    if reference < 100:
        return f"{value:.1f}"
    if reference < 10_000:
        return f"{value:.0f}"
    # five digits and more: three significant ones, grouped ("292,000", not "292384": the rest is noise)
    digits = int(math.floor(math.log10(reference))) - 2
    return f"{round(value, -digits):,.0f}"


def format_bytes(size: float) -> str:
    """``48_213_000`` -> ``"48.2 MB"`` (decimal units, three significant digits)."""
    if size is None or not math.isfinite(size):
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(size) >= scale:
            value = size / scale
            return f"{value:.0f} {unit}" if abs(value) >= 100 else f"{value:.3g} {unit}"
    return f"{size:.0f} B"


def format_disk(size: float) -> str:
    """Disk use as ``du -h`` and ``df -h`` count it, in 1,024s: ``1_209_626_056`` -> ``"1.1 GB"``.

    Every disk figure the course prints (``make status``, ``make run``'s last line, the report's
    environment table, the doctor's free space) is counted this way, so they agree with each other
    and with the system's own tools; :func:`format_bytes` (decimal) is for memory measurements."""
    if size is None or not math.isfinite(size):
        return "n/a"
    for unit in ("B", "kB", "MB"):
        if abs(size) < 1024:
            return f"{size:,.0f} {unit}" if unit in ("B", "kB") else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} GB"


def format_number(value: float, digits: int = 3) -> str:
    """A float for people: at most ``digits`` significant digits (never more than MAX_DIGITS),
    thousands separated, no exponent for everyday magnitudes: 526.17 -> "526", 0.012345 -> "0.0123",
    1234567.8 -> "1,234,568" (an integer part is never cut: 1,234,568 is still exact to the unit)."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return f"{int(value):,}"
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    digits = max(1, min(digits, MAX_DIGITS))
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= digits - 1:          # no decimals needed: show a rounded integer
        return f"{round(value):,}"
    if magnitude < -6:
        return f"{value:.{digits - 1}e}"
    decimals = digits - 1 - magnitude
    text = f"{value:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_value(value: Any, digits: int = 3) -> str:
    """Any scalar, list or mapping as short readable text (no raw ``repr`` of a dict):
    ``{"a": 1.23456, "b": 2}`` -> ``"a 1.23, b 2"``."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return tame_numbers(value)
    if isinstance(value, (bool, Integral)):
        return format_number(value)
    if isinstance(value, Real):
        return format_number(float(value), digits)
    if isinstance(value, dict):
        return ", ".join(f"{k} {format_value(v, digits)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(format_value(v, digits) for v in value)
    if hasattr(value, "item"):  # numpy scalars
        return format_value(value.item(), digits)
    return tame_numbers(str(value))


_UNIT_SUFFIXES = (("_ms", "ms"), ("_s", "s"), ("_mb", "MB"), ("_bytes", "bytes"))


def counter_label(key: Any) -> str:
    """A counter's name as a reader would write it: ``"p50_ms"`` -> ``"p50 (ms)"``, ``"rows_read"`` -> ``"rows read"``."""
    key = str(key)
    for suffix, unit in _UNIT_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            key = f"{key[:-len(suffix)]} ({unit})"
            break
    return key.replace("_", " ")


def flatten_counters(counters: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested counters as ``(label, value)`` rows, the panel's table and the report's alike:
    ``{"statements": {"lazy_loads": 171}}`` -> ``[("statements · lazy loads", 171)]``; a list of records gets
    a row per record (``"name [1]"``)."""
    if isinstance(counters, dict):
        rows = []
        for key, value in counters.items():
            rows.extend(flatten_counters(value, f"{prefix} · {counter_label(key)}" if prefix else counter_label(key)))
        return rows
    if isinstance(counters, list) and counters and all(isinstance(v, dict) for v in counters):
        return [(f"{prefix} [{i + 1}]", format_value(v)) for i, v in enumerate(counters)]
    return [(prefix, counters)]


_LONG_FLOAT = re.compile(r"(?<![\w.])(\d[\d,]*\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


def _significant(text: str) -> int:
    digits = text.replace(",", "").replace(".", "").lstrip("0")
    return len(digits)


def tame_numbers(text: str, digits: int = MAX_DIGITS) -> str:
    """Round every decimal number in free text that shows more than ``digits`` significant digits
    (``"rate 526.1737146580149 req/s"`` -> ``"rate 526.2 req/s"``); integers and short numbers stay."""
    def shorten(match: re.Match) -> str:
        token = match.group(0)
        core = match.group(1)
        if _significant(core) <= digits and token == core:
            return token
        try:
            return format_number(float(token.replace(",", "")), digits)
        except ValueError:
            return token
    return _LONG_FLOAT.sub(shorten, text)


def significant_digits(token: str) -> int:
    """How many significant digits a printed decimal shows ("526.17" -> 5, "0.0123" -> 3)."""
    return _significant(token)
