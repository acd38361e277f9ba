"""perflab.widgets driven programmatically (no browser): values in, button clicked, headline and output out."""
import base64

import pytest

from perflab import widgets
from perflab.harness import compare


def squares(n, mode):
    """sum of squares"""
    return widgets.Outcome(headline=f"total {sum(i * i for i in range(n)):,} ({mode})", counters={"n": n})


def make_panel(fn=squares, **kw):
    return widgets.panel(fn, widgets.Int("n", 10, 1, 1000, label="N"),
                         widgets.Choice("mode", ["loop", "formula"], label="how"), run_label="Measure", **kw)


def test_a_click_runs_the_function_with_the_controls_values_and_names_them_in_the_headline():
    calls = []

    def spy(n, mode):
        calls.append((n, mode))
        return squares(n, mode)

    panel = make_panel(spy, live=True)
    assert calls == [], "nothing runs before the button is pressed"
    panel.inputs["n"].value = 300
    panel.inputs["mode"].value = "formula"
    panel.button.click()
    assert calls == [(300, "formula")]
    assert "N = 300" in panel.headline.value and "how = formula" in panel.headline.value
    assert f"total {sum(i * i for i in range(300)):,}" in panel.headline.value
    assert "n" in panel.output.outputs[0]["data"]["text/plain"], "the counters table is shown in the output area"
    assert not panel.button.disabled and panel.progress.layout.visibility == "hidden"
    assert panel.run(n=20).headline.startswith("total 2,470")
    assert panel.runs == 2


def test_the_counters_table_reads_like_prose_not_like_a_repr():
    panel = make_panel(lambda n, mode: widgets.Outcome(
        headline="ran", counters={"plan": ["Seq Scan"], "rows read": {"bad": 1000000.0, "good": 114},
                                  "pool of 3": {"p99_ms": 400.0, "rows_read": 2}}), live=True)
    panel.run(n=5)
    table = panel.output.outputs[0]["data"]["text/plain"]
    assert "Seq Scan" in table and "['Seq Scan']" not in table
    assert "1,000,000" in table and "1000000.0" not in table
    assert "rows read · good" in table
    assert "pool of 3 · p99 (ms)" in table and "pool of 3 · rows read" in table and "_ms" not in table


def test_a_value_outside_the_safe_range_is_refused_with_a_message_and_nothing_runs():
    calls = []
    panel = make_panel(lambda n, mode: calls.append(n) or "ran", live=True)
    assert panel.run(n=5000) is None
    assert calls == []
    assert "outside the safe range 1–1,000" in panel.status.value and "refused" in panel.status.value
    with pytest.raises(ValueError, match="whole number"):
        panel.controls["n"].check(2.5)
    assert panel.run(n=1000).headline == "ran"
    with pytest.raises(TypeError, match="no control named"):
        panel.run(rows=3)
    with pytest.raises(ValueError, match="outside its own range"):
        widgets.Int("n", 0, 1, 10)


def test_the_function_may_refuse_a_combination():
    def picky(n, mode):
        if n > 100 and mode == "loop":
            raise widgets.Refused("a loop over more than 100 items takes too long here")
        return "ok"

    panel = make_panel(picky, live=True)
    assert panel.run(n=500, mode="loop") is None
    assert "refused" in panel.status.value and "too long" in panel.error
    assert panel.run(n=500, mode="formula").headline == "ok"


def test_a_failing_function_shows_its_error_and_leaves_the_panel_usable():
    def broken(n, mode):
        raise RuntimeError("the server went away")

    panel = make_panel(broken, live=True)
    assert panel.run() is None
    assert "RuntimeError: the server went away" in panel.status.value
    assert not panel.button.disabled


def test_a_comparison_shows_its_plot_and_its_ratio_headline():
    def fast(n):
        """sum()"""
        return sum(range(n))

    def slow(n):
        """loop"""
        total = 0
        for i in range(n):
            total += i
        return total

    def measure(n):
        """loop vs sum()"""
        return compare([slow, fast], args=(n,), preset="fast", max_seconds=1)

    panel = widgets.panel(measure, widgets.Int("n", 1000, 10, 100_000), live=True)
    outcome = panel.run(n=20_000)
    assert "n = 20,000" in panel.headline.value and "sum()" in outcome.headline and "loop" in outcome.headline
    assert outcome.figure is not None
    png = next(o["data"]["image/png"] for o in panel.output.outputs if "image/png" in o["data"])
    assert isinstance(png, str) and base64.b64decode(png).startswith(b"\x89PNG"), "a PNG, base64 as Jupyter expects"


def test_flags_and_floats():
    seen = {}

    def fixes(applied, rate):
        seen.update(applied=applied, rate=rate)
        return f"{len(applied)} fixes"

    panel = widgets.panel(fixes, widgets.Flags("applied", ["index", "cache", "batch"], ["index"]),
                          widgets.Float("rate", 1.5, 0.1, 10, unit="/s"), live=True)
    panel.run(applied=("batch", "index"), rate=2.0)
    assert seen == {"applied": ("index", "batch"), "rate": 2.0}
    assert "applied = index + batch" in panel.headline.value and "rate = 2 /s" in panel.headline.value
    assert panel.run(rate=11) is None and "0.1–10 /s" in panel.error


def test_headless_it_renders_a_static_description(monkeypatch):
    monkeypatch.setenv("PERFLAB_WIDGETS", "static")
    bundle = make_panel()._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" not in bundle
    assert "N: 1–1,000 (default 10)" in bundle["text/plain"] and "make lab" in bundle["text/html"]
    monkeypatch.setenv("PERFLAB_WIDGETS", "live")
    assert "application/vnd.jupyter.widget-view+json" in make_panel()._repr_mimebundle_()


def test_live_means_a_kernel_started_by_a_jupyter_server(monkeypatch):
    monkeypatch.delenv("PERFLAB_WIDGETS", raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert not widgets.live_frontend()
    monkeypatch.setenv("JPY_SESSION_NAME", "/work/notebooks/01_let_the_index_work.ipynb")
    assert widgets.live_frontend()


def test_the_progress_bar_follows_the_measurements_reported_rounds():
    """While fn runs, the panel hears the harness's done/total (and no notebook line is drawn for it)."""
    from perflab import progress

    seen = []

    def measured(n, mode):
        """a harness comparison"""
        result = compare({"loop": lambda: sum(i * i for i in range(n)),
                          "formula": lambda: (n - 1) * n * (2 * n - 1) // 6}, preset="fast")
        seen.append(panel._reported)
        return result

    panel = make_panel(measured, live=True)
    panel.run(n=50)
    assert panel.error is None and panel.runs == 1
    reported = seen[0]
    assert isinstance(reported, progress.State) and reported.unit == "rounds" and reported.total >= 6
    assert 0 < reported.done <= reported.total
    assert not progress._listeners, "the panel stops listening when the run ends"
