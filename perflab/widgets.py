"""Try-it panels: a few controls, a Run button, a progress bar and an output area, in a few lines.

    from perflab import widgets

    def try_page(n, rtt_ms):                       # the notebook's own measurement, with parameters
        return compare([...], args=(engine, n))    # a Comparison, a Sweep, or a widgets.Outcome

    widgets.panel(try_page, widgets.Int("n", 100, 10, 1000, label="N (orders)"),
                  widgets.Int("rtt_ms", 5, 0, 20, label="RTT", unit="ms"), run_label="Measure")

The panel calls the function it is given, the same one the notebook's default run uses: it measures
nothing itself. Nothing runs on a slider tick, only on the button; while it runs the button is disabled
and a progress bar follows the measurement's own done/total (reported by the harness and the other
front-ends through ``perflab.progress``), or, for a function that reports nothing, the expected time
(``seconds=``). A value outside a control's safe range is refused with a message (nothing runs), so a
typo cannot freeze the kernel or fill the disk.
The headline names the parameters it was measured with, then the result's own headline.

Headless (``make run``, ``make test``, the grader: nbclient, no browser) a panel renders as a static
description and never runs; the recorded results are the default run's. A panel is live when the
kernel was started by a Jupyter server (JupyterLab, Notebook 7 set ``JPY_SESSION_NAME``), or when
``PERFLAB_WIDGETS=live``; ``PERFLAB_WIDGETS=static`` forces the static form.
"""
from __future__ import annotations

import html
import math
import os
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from perflab import progress

__all__ = ["Int", "Float", "Choice", "Flags", "Outcome", "Refused", "Panel", "panel", "live_frontend"]


class Refused(ValueError):
    """Raised by a panel's function for a combination of values it will not run (shown as refused)."""


# --------------------------------------------------------------------------------------------------
# Controls: what a parameter is, its default and its safe range
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Control:
    name: str
    value: Any
    label: str | None = None
    unit: str = ""

    @property
    def title(self) -> str:
        return self.label or self.name

    def show(self, value: Any) -> str:
        """``"RTT = 5 ms"``: how the headline names this parameter's value."""
        text = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else f"{value:g}" \
            if isinstance(value, float) else str(value)
        return f"{self.title} = {text}{' ' + self.unit if self.unit else ''}"

    def describe(self) -> str:
        raise NotImplementedError

    def check(self, value: Any) -> Any:
        """The value to use, or ValueError saying why it is refused."""
        raise NotImplementedError

    def widget(self):
        raise NotImplementedError


@dataclass(frozen=True)
class Int(_Control):
    """A whole number in ``[min, max]`` (typed, so a value outside is refused, not silently clamped)."""

    min: int = 0
    max: int = 100
    step: int = 1

    def __init__(self, name: str, value: int, min: int, max: int, *, step: int = 1, label: str | None = None,
                 unit: str = ""):
        if not min <= value <= max:
            raise ValueError(f"{name}: the default {value} is outside its own range {min}–{max}")
        for key, item in (("name", name), ("value", value), ("label", label), ("unit", unit), ("min", min),
                          ("max", max), ("step", step)):
            object.__setattr__(self, key, item)

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.title}: {self.min:,}–{self.max:,}{unit} (default {self.value:,})"

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise ValueError(f"{self.title} must be a whole number, not {value!r}")
        value = int(value)
        if not self.min <= value <= self.max:
            raise ValueError(f"{self.show(value)} is outside the safe range {self.min:,}–{self.max:,}"
                             f"{' ' + self.unit if self.unit else ''} of this panel: pick a value inside it "
                             "(a larger run could take minutes or fill the disk)")
        return value

    def widget(self):
        import ipywidgets as w

        return w.IntText(value=self.value, step=self.step, description=self._description(),
                         style={"description_width": "initial"}, layout=w.Layout(width="auto"))

    def _description(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.title} ({self.min:,}–{self.max:,}{unit})"


@dataclass(frozen=True)
class Float(Int):
    """A number in ``[min, max]``."""

    def __init__(self, name: str, value: float, min: float, max: float, *, step: float = 0.1,
                 label: str | None = None, unit: str = ""):
        super().__init__(name, value, min, max, step=step, label=label, unit=unit)

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.title}: {self.min:g}–{self.max:g}{unit} (default {self.value:g})"

    def check(self, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{self.title} must be a number, not {value!r}")
        value = float(value)
        if not self.min <= value <= self.max:
            raise ValueError(f"{self.show(value)} is outside the safe range {self.min:g}–{self.max:g}"
                             f"{' ' + self.unit if self.unit else ''} of this panel: pick a value inside it")
        return value

    def widget(self):
        import ipywidgets as w

        unit = f" {self.unit}" if self.unit else ""
        return w.FloatText(value=self.value, step=self.step, style={"description_width": "initial"},
                           description=f"{self.title} ({self.min:g}–{self.max:g}{unit})",
                           layout=w.Layout(width="auto"))


@dataclass(frozen=True)
class Choice(_Control):
    """One of a few options (a dropdown): ``options`` is a list, or a mapping label -> value."""

    options: Any = ()

    def __init__(self, name: str, options: Sequence | Mapping, value: Any = None, *, label: str | None = None,
                 unit: str = ""):
        pairs = tuple(options.items()) if isinstance(options, Mapping) else tuple((str(o), o) for o in options)
        if not pairs:
            raise ValueError(f"{name}: a Choice needs at least one option")
        value = pairs[0][1] if value is None else value
        if value not in [v for _, v in pairs]:
            raise ValueError(f"{name}: the default {value!r} is not one of the options")
        for key, item in (("name", name), ("value", value), ("label", label), ("unit", unit), ("options", pairs)):
            object.__setattr__(self, key, item)

    def _label_of(self, value: Any) -> str:
        return next((text for text, v in self.options if v == value), str(value))

    def show(self, value: Any) -> str:
        return f"{self.title} = {self._label_of(value)}{' ' + self.unit if self.unit else ''}"

    def describe(self) -> str:
        return f"{self.title}: {' | '.join(text for text, _ in self.options)} (default {self._label_of(self.value)})"

    def check(self, value: Any) -> Any:
        if value not in [v for _, v in self.options]:
            raise ValueError(f"{self.title} must be one of {', '.join(t for t, _ in self.options)}, not {value!r}")
        return value

    def widget(self):
        import ipywidgets as w

        return w.Dropdown(options=list(self.options), value=self.value, description=self.title,
                          style={"description_width": "initial"}, layout=w.Layout(width="auto"))


@dataclass(frozen=True)
class Flags(_Control):
    """Any subset of a few named switches (one checkbox each); the value is the tuple of those ticked."""

    options: tuple = ()

    def __init__(self, name: str, options: Sequence[str], value: Sequence[str] = (), *, label: str | None = None):
        options, value = tuple(options), tuple(value)
        unknown = [v for v in value if v not in options]
        if unknown:
            raise ValueError(f"{name}: {unknown} are not among the options {options}")
        for key, item in (("name", name), ("value", value), ("label", label), ("unit", ""), ("options", options)):
            object.__setattr__(self, key, item)

    def show(self, value: Any) -> str:
        return f"{self.title} = {' + '.join(value) if value else 'none'}"

    def describe(self) -> str:
        chosen = " + ".join(self.value) if self.value else "none"
        return f"{self.title}: any of {', '.join(self.options)} (default {chosen})"

    def check(self, value: Any) -> Any:
        value = tuple(value)
        unknown = [v for v in value if v not in self.options]
        if unknown:
            raise ValueError(f"{self.title}: {', '.join(map(str, unknown))} not among {', '.join(self.options)}")
        return tuple(o for o in self.options if o in value)  # in the options' order

    def widget(self):
        return _FlagsWidget(self)


class _FlagsWidget:
    """A row of checkboxes with a ``value`` (tuple of the ticked names) like any other control."""

    def __init__(self, control: Flags):
        import ipywidgets as w

        self.boxes = {option: w.Checkbox(value=option in control.value, description=option, indent=False,
                                         layout=w.Layout(width="auto"))
                      for option in control.options}
        self.box = w.HBox([w.Label(control.title + ":"), *self.boxes.values()])

    @property
    def value(self) -> tuple:
        return tuple(option for option, box in self.boxes.items() if box.value)

    @value.setter
    def value(self, chosen) -> None:
        for option, box in self.boxes.items():
            box.value = option in tuple(chosen)


# --------------------------------------------------------------------------------------------------
# What a run shows
# --------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """What a panel shows after a run: the headline, and optionally a figure, a table and counters."""

    headline: str
    figure: Any = None
    table: Any = None
    counters: Mapping[str, Any] | None = None
    extra: list = field(default_factory=list)

    @classmethod
    def of(cls, result: Any, title: str | None = None) -> "Outcome":
        """A Comparison, a Sweep, an Outcome or a string, as an Outcome."""
        if isinstance(result, Outcome):
            return result
        if isinstance(result, str):
            return cls(headline=result)
        if hasattr(result, "slopes") and hasattr(result, "plot"):          # a Sweep
            slopes = ", ".join(f"{label} {slope:.2f}" for label, slope in result.slopes.items()
                               if not math.isnan(slope))
            return cls(headline=f"log-log slopes: {slopes}", figure=result.plot(title=title))
        if hasattr(result, "ratio") and hasattr(result, "plot"):           # a Comparison
            headline = result.headline or str(result.summary.iloc[0].to_dict())
            return cls(headline=headline, figure=result.plot(title=title))
        raise TypeError(f"a panel's function returns a Comparison, a Sweep, a widgets.Outcome or a str, "
                        f"not {type(result).__name__}")


def _display_data(item: Any) -> dict:
    """An output-area entry for ``item``, binary data (a PNG) base64-encoded as Jupyter expects."""
    import base64

    from IPython.core.formatters import format_display_data

    data, metadata = format_display_data(item)
    data = {mime: base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value
            for mime, value in data.items()}
    return {"output_type": "display_data", "data": data, "metadata": metadata}


def live_frontend() -> bool:
    """True in a kernel a Jupyter server started (JupyterLab, Notebook 7), unless PERFLAB_WIDGETS says."""
    mode = os.environ.get("PERFLAB_WIDGETS", "").strip().lower()
    if mode in ("live", "static"):
        return mode == "live"
    return bool(os.environ.get("JPY_SESSION_NAME"))


# --------------------------------------------------------------------------------------------------
# The panel
# --------------------------------------------------------------------------------------------------

class Panel:
    """Controls + Run button + progress + headline + output, calling ``fn(**values)`` on Run only."""

    def __init__(self, fn: Callable[..., Any], controls: Sequence[_Control], *, run_label: str = "Run",
                 title: str | None = None, seconds: float = 10.0, live: bool | None = None):
        names = [c.name for c in controls]
        if len(set(names)) != len(names):
            raise ValueError(f"two controls share a name: {names}")
        self.fn = fn
        self.controls = {c.name: c for c in controls}
        self.title = title or (fn.__doc__ or fn.__name__).strip().splitlines()[0]
        self.run_label = run_label
        self.seconds = float(seconds)
        self.live = live_frontend() if live is None else live
        self.last: Outcome | None = None
        self.error: str | None = None
        self.runs = 0
        self._build()

    # ---- the widgets ---------------------------------------------------------------------------

    def _build(self) -> None:
        import ipywidgets as w

        self.inputs = {name: control.widget() for name, control in self.controls.items()}
        self.button = w.Button(description=self.run_label, button_style="primary", icon="play",
                               tooltip=f"measure with these values (about {self.seconds:.0f} s)")
        self.button.add_class("perflab-run")
        self.progress = w.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                        layout=w.Layout(width="200px", visibility="hidden"))
        self.status = w.HTML(value="")
        self.status.add_class("perflab-status")
        self.headline = w.HTML(value="<i>not run yet: the default run's result is above</i>")
        self.headline.add_class("perflab-headline")
        self.output = w.Output()
        self.output.add_class("perflab-output")
        rows = [getattr(i, "box", i) for i in self.inputs.values()]
        self.box = w.VBox([w.HTML(f"<b>Try it</b> · {html.escape(self.title)}"),
                           w.HBox(rows, layout=w.Layout(flex_flow="row wrap")),
                           w.HBox([self.button, self.progress, self.status]),
                           self.headline, self.output],
                          layout=w.Layout(border="1px solid #ccc", padding="6px"))
        self.box.add_class("perflab-panel")
        self.button.on_click(lambda _button: self._click())

    # ---- running -------------------------------------------------------------------------------

    def values(self) -> dict[str, Any]:
        """The controls' current values, checked against their ranges (ValueError if refused)."""
        return {name: control.check(self.inputs[name].value) for name, control in self.controls.items()}

    def run(self, **values) -> Outcome | None:
        """Set the given controls (by name), then press Run; return the Outcome (None if refused/failed)."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise TypeError(f"no control named {', '.join(sorted(unknown))}; controls: {', '.join(self.controls)}")
        for name, value in values.items():
            self.inputs[name].value = value
        self.button.click()
        return self.last if self.error is None else None

    def _click(self) -> None:
        self.error = None
        try:
            values = self.values()
        except (ValueError, TypeError) as refused:
            return self._refuse(refused)
        said = " · ".join(self.controls[name].show(value) for name, value in values.items())
        self.button.disabled = True
        self.status.value = f"running with {html.escape(said)} …"
        self.progress.value = 0.0
        self.progress.layout.visibility = "visible"
        done = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(done, time.monotonic()), daemon=True)
        ticker.start()
        started = time.monotonic()
        self._reported = None
        try:
            with progress.listen(self._on_progress, quiet=True):
                outcome = Outcome.of(self.fn(**values), title=f"{self.title} · {said}")
        except Refused as refused:
            return self._refuse(refused)
        except Exception as failure:  # the learner sees what failed; the kernel stays usable
            self.error = f"{type(failure).__name__}: {failure}"
            self.status.value = (f"<span style='color:#b00'><b>failed</b>: {html.escape(self.error)}</span>"
                                 f"<pre>{html.escape(traceback.format_exc(limit=4))}</pre>")
            return
        finally:
            done.set()
            ticker.join()
            self.progress.layout.visibility = "hidden"
            self.button.disabled = False
        self.runs += 1
        self.last = outcome
        elapsed = time.monotonic() - started
        self._show(outcome)  # first: once the headline changes, the figure and tables are there
        self.status.value = f"done in {elapsed:.1f} s (run {self.runs})"
        self.headline.value = f"<b>{html.escape(said)}</b> → {html.escape(outcome.headline)}"

    def _refuse(self, reason: Exception) -> None:
        self.error = str(reason)
        self.status.value = f"<span style='color:#b00'><b>refused</b>: {html.escape(self.error)}</span>"

    def _on_progress(self, state: progress.State) -> None:
        """The measurement's own count (done/total), reported by the harness as it goes."""
        if not state.finished and state.total > 0:
            self._reported = state

    def _tick(self, done: threading.Event, started: float) -> None:
        """Advance the bar: by the measurement's reported done/total when it reports it, else against
        the expected time (never reaching the end before the run does)."""
        while not done.wait(0.25):
            elapsed = time.monotonic() - started
            reported = getattr(self, "_reported", None)
            if reported is not None:
                self.progress.value = min(0.95, reported.fraction)
                self.progress.description = f"{reported.done}/{reported.total}"
                self.progress.tooltip = reported.line()
            else:
                self.progress.value = min(0.95, elapsed / max(self.seconds, 0.1))
                self.progress.description = f"{elapsed:.0f} s"
        self.progress.value = 1.0

    def _show(self, outcome: Outcome) -> None:
        """Figure, table, counters into the output area (set as its state: works with or without a kernel)."""
        shown = [outcome.figure, outcome.table, *outcome.extra]
        if outcome.counters:
            import pandas as pd

            from perflab.units import flatten_counters, format_value

            rows = flatten_counters(outcome.counters)
            shown.append(pd.DataFrame({"counter": [label for label, _ in rows],
                                       "value": [format_value(value) for _, value in rows]}).set_index("counter"))
        self.output.outputs = tuple(_display_data(item) for item in shown if item is not None)

    # ---- display -------------------------------------------------------------------------------

    def describe(self) -> str:
        return "; ".join(control.describe() for control in self.controls.values())

    def _repr_mimebundle_(self, include=None, exclude=None):
        if self.live:
            return self.box._repr_mimebundle_(include=include, exclude=exclude)
        text = (f"Try it · {self.title} — {self.describe()}. Interactive in JupyterLab (`make lab`): change a "
                f"value, press {self.run_label}. Not run here (headless): the results above are the defaults'.")
        items = "".join(f"<li>{html.escape(c.describe())}</li>" for c in self.controls.values())
        markup = (f"<div class='perflab-panel-static'><b>Try it</b> · {html.escape(self.title)}<ul>{items}</ul>"
                  f"<i>Interactive in JupyterLab (<code>make lab</code>): change a value and press "
                  f"<b>{html.escape(self.run_label)}</b>. Not run here (headless): the results above are the "
                  f"defaults'.</i></div>")
        return {"text/plain": text, "text/html": markup}


def panel(fn: Callable[..., Any], *controls: _Control, run_label: str = "Run", title: str | None = None,
          seconds: float = 10.0, live: bool | None = None) -> Panel:
    """A try-it panel for ``fn(**values)``: the cell's last expression displays it.

    ``fn`` returns a Comparison, a Sweep, an :class:`Outcome` or a headline string. ``seconds`` is the
    expected time of one run (the progress bar's scale when the measurement reports no progress). ``title`` defaults to ``fn``'s docstring.
    """
    return Panel(fn, controls, run_label=run_label, title=title, seconds=seconds, live=live)
