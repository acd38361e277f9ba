"""One small protocol for everything a notebook records, and one versioned schema for its JSON.

Every result the course measures — a harness ``Comparison`` or ``Sweep``, ``latency.Latencies``,
``memory.MemoryComparison``, ``complexity.CountSweep``, ``load.LoadResult``, a table, a set of
counters — answers the same five questions, and the report reads nothing else:

    result.kind        # "comparison", "sweep", "latencies", "memory", "operation counts", "load", "table", ...
    result.title       # a short name, or None (the report then uses the name it was recorded under)
    result.headline    # one human sentence with the number: "range: 212x faster than EXTRACT (95% CI 190x–240x)"
    result.tidy()      # a tidy pandas DataFrame, one row per variant (or per variant and size)
    result.figures     # the figures saved from it (paths), possibly empty
    result.to_dict()   # {"schema": SCHEMA, "kind", "title", "headline", "table": {"columns", "rows"},
                       #  "figures", ...the kind's own fields}

A plain dict handed to ``record()`` is wrapped by :func:`as_result` into a :class:`Record` (its
``"headline"``, its list of rows under ``"rows"``/``"table"``/any list of dicts, the rest kept as
details), so old notebooks keep working and the report still never guesses a shape.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from perflab.units import format_number, format_value

__all__ = ["SCHEMA", "Result", "ResultMixin", "Record", "as_result", "table_dict", "attach_figure",
           "headline_from_rows"]

SCHEMA = "perflab.result/1"


@runtime_checkable
class Result(Protocol):
    kind: str

    @property
    def title(self) -> str | None: ...

    @property
    def headline(self) -> str | None: ...

    @property
    def figures(self) -> tuple[str, ...]: ...

    def tidy(self): ...

    def to_dict(self) -> dict: ...


def _plain(value: Any) -> Any:
    """numpy/pandas scalars as Python ones, NaN/inf as None (JSON-safe, as the schema requires)."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict)):
        try:
            value = value.item()
        except (ValueError, TypeError):
            pass
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def table_dict(frame) -> dict:
    """A DataFrame as ``{"columns": [...], "rows": [[...], ...]}`` (index reset, JSON-safe values)."""
    if frame is None:
        return {"columns": [], "rows": []}
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    if frame.index.name is not None or any(name is not None for name in frame.index.names):
        frame = frame.reset_index()
    columns = [str(c) for c in frame.columns]
    rows = [[_plain(v) if not isinstance(v, (dict, list)) else v for v in row]
            for row in frame.itertuples(index=False, name=None)]
    return {"columns": columns, "rows": rows}


def attach_figure(result: Any, figure: Any) -> None:
    """Remember on ``result`` the file ``figure`` was saved to (plots set ``figure.perflab_path``)."""
    path = getattr(figure, "perflab_path", None)
    if path is None:
        return
    try:
        saved = result.__dict__.setdefault("_perflab_figures", [])
    except AttributeError:  # a result without __dict__ cannot remember its figures
        return
    if str(path) not in saved:
        saved.append(str(path))


class ResultMixin:
    """What every result class shares: ``figures``, ``title`` and the schema envelope of ``to_dict``.

    A class sets ``kind``, implements ``headline`` and ``tidy()``, and ``_details()`` (its own
    JSON-safe fields), and gets ``to_dict()``.
    """

    kind: str = "result"

    @property
    def title(self) -> str | None:
        return None

    @property
    def figures(self) -> tuple[str, ...]:
        return tuple(self.__dict__.get("_perflab_figures", ()))

    @property
    def headline(self) -> str | None:  # pragma: no cover - every class overrides it
        return None

    def tidy(self):  # pragma: no cover - every class overrides it
        import pandas as pd

        return pd.DataFrame()

    def _details(self) -> dict:
        return {}

    def to_dict(self) -> dict[str, Any]:
        details = self._details()
        envelope = {"schema": SCHEMA, "kind": self.kind, "title": self.title, "headline": self.headline,
                    "table": table_dict(self.tidy()), "figures": list(self.figures)}
        clash = set(envelope) & set(details)
        if clash:
            raise ValueError(f"{type(self).__name__}._details() may not redefine {sorted(clash)}")
        return envelope | details


def _rows_of(value: Any) -> list[dict] | None:
    if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
        return [dict(v) for v in value]
    return None


def _label_column(columns: list[str]) -> str | None:
    for name in ("variant", "name", "label", "acks", "keys", "experiment", "run"):
        if name in columns:
            return name
    return None


def headline_from_rows(rows: list[dict], *, limit: int = 4) -> str | None:
    """A short sentence from a small table: "per request: backends 500 · pool of 10: backends 10"."""
    if not rows:
        return None
    columns = list(rows[0])
    label = _label_column(columns)
    if label is None and isinstance(rows[0].get(columns[0]), str):
        label = columns[0]
    numeric = [c for c in columns if c != label and all(
        isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) for r in rows)]
    numeric.sort(key=lambda c: len({r[c] for r in rows}) == 1)  # the columns that tell the rows apart first
    if not numeric or len(rows) > limit:
        return None
    if label is None:
        return " · ".join(", ".join(f"{c} {format_number(r[c])}" for c in numeric[:4]) for r in rows)
    return " · ".join(f"{format_value(r.get(label))}: " + ", ".join(f"{c} {format_number(r[c])}" for c in numeric[:2])
                      for r in rows)


class Record(ResultMixin):
    """A result handed over as a dict (a grid of runs, a simulation, a table, counters)."""

    def __init__(self, data: Mapping[str, Any]):
        data = dict(data)
        self.kind = str(data.pop("kind", None) or "record")
        self._title = data.pop("title", None)
        given = data.pop("headline", None)
        self._details_data = dict(data)  # kept whole: summary.json loses nothing the notebook gave
        self._rows = _rows_from(data)
        self._headline = given if isinstance(given, str) else headline_from_rows(self._rows)

    @property
    def title(self) -> str | None:
        return self._title

    @property
    def headline(self) -> str | None:
        return self._headline

    def tidy(self):
        import pandas as pd

        return pd.DataFrame(self._rows)

    def _details(self) -> dict:
        return {"details": self._details_data} if self._details_data else {}


def _rows_from(data: dict) -> list[dict]:
    """The tidy rows in a dict: its list of records, or one row per {name: {...}}, or one row of scalars."""
    for key in ("rows", "table", "trials", "peaks", "functions", "percentiles"):
        rows = _rows_of(data.get(key))
        if rows is not None:
            return rows
    for value in data.values():
        rows = _rows_of(value)
        if rows is not None:
            return rows
    if data and all(isinstance(v, Mapping) for v in data.values()):
        return [{"name": str(k), **{f: (format_value(x) if isinstance(x, (Mapping, list)) else x)
                                     for f, x in v.items()}} for k, v in data.items()]
    lists = {k: v for k, v in data.items() if isinstance(v, (list, tuple)) and len(v) >= 2
             and all(isinstance(x, (int, float, str)) for x in v)}
    lengths = {len(v) for v in lists.values()}
    if len(lists) >= 2 and len(lengths) == 1:  # {"fan_out": [...], "simulated": [...]}: one row per position
        return [dict(zip(lists, values)) for values in zip(*lists.values())]
    flat = [(k, v) for k, v in data.items() if isinstance(v, Mapping)
            and v and all(isinstance(x, (int, float)) for x in v.values())]
    if len(flat) == 1:  # {"rss_growth_mib": {variant: number}}: one row per variant
        key, values = flat[0]
        return [{"variant": str(k), key: v} for k, v in values.items()]
    if data and all(not isinstance(v, (Mapping, list)) or _short_list(v) for v in data.values()):
        return [{k: (format_value(v) if isinstance(v, (list, tuple)) else v) for k, v in data.items()}]
    return []


def _short_list(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) <= 4 and all(
        isinstance(v, (int, float, str)) or v is None for v in value)


def as_result(value: Any) -> Any:
    """``value`` if it implements the protocol, a :class:`Record` for a dict; TypeError otherwise."""
    if isinstance(value, Result):
        return value
    if isinstance(value, Mapping):
        if value.get("schema") == SCHEMA:  # already a protocol dict (e.g. read back from JSON)
            return _Frozen(value)
        return Record(value)
    if hasattr(value, "to_dict") and callable(value.to_dict):
        data = value.to_dict()
        if isinstance(data, Mapping):
            return as_result(data)
    raise TypeError(f"record(): a {type(value).__name__} is not a result; pass a perflab result "
                    "(Comparison, Sweep, Latencies, MemoryComparison, CountSweep, LoadResult) or a dict")


class _Frozen(ResultMixin):
    """A protocol dict handed back in: kept as it is."""

    def __init__(self, data: Mapping[str, Any]):
        self._data = dict(data)
        self.kind = self._data.get("kind", "record")

    @property
    def title(self):
        return self._data.get("title")

    @property
    def headline(self):
        return self._data.get("headline")

    def tidy(self):
        import pandas as pd

        table = self._data.get("table") or {}
        return pd.DataFrame(table.get("rows", []), columns=table.get("columns") or None)

    def to_dict(self) -> dict:
        return dict(self._data)
