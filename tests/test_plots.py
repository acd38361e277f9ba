"""Tests for perflab.plots: the figures say what the measurements say, and land where they should."""
from __future__ import annotations

import time

import matplotlib
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from perflab import paths, plots
from perflab.harness import compare, format_seconds, sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def all_text(figure: Figure) -> str:
    """Every string drawn on the figure, with wrapped lines joined back into one."""
    return " | ".join(t.get_text().replace("\n", " ") for t in figure.findobj(Text))


@pytest.fixture
def figures_dir(tmp_path, monkeypatch):
    target = tmp_path / "figures"
    monkeypatch.setattr(paths, "FIGURES_DIR", target)
    return target


def by_extract():
    """EXTRACT(year FROM placed)"""
    time.sleep(0.003)


def by_range():
    """placed >= '2023-01-01' AND placed < '2024-01-01'"""
    return None


@pytest.fixture(scope="module")
def wide_spread():
    # ~3 ms against ~50 ns: far beyond the 30x that switches the bars to a log axis.
    return compare([by_extract, by_range], preset="fast")


@pytest.fixture(scope="module")
def narrow_spread():
    return compare({"sleep 2 ms": lambda: time.sleep(0.002), "sleep 1 ms": lambda: time.sleep(0.001)},
                   preset="fast")


@pytest.fixture(scope="module")
def growth():
    return sweep({"sum(range(n))": lambda n: sum(range(n)), "n(n-1)/2": lambda n: n * (n - 1) // 2},
                 sizes=[1_000, 4_000, 16_000], setup=lambda n: n, preset="fast")


def test_bars_show_medians_whiskers_and_the_ratio(wide_spread, figures_dir):
    figure = plots.bars(wide_spread, title="Filtering orders by year", save="Orders: EXTRACT vs range!")
    assert isinstance(figure, Figure)
    text = all_text(figure)
    assert wide_spread.headline in text
    ratio = wide_spread.ratio()
    assert "faster than EXTRACT(year FROM placed)" in text
    assert str(ratio)[str(ratio).index("(95% CI"):] in text
    assert "Filtering orders by year" in text
    for median_ms in wide_spread.summary.median_ms:
        assert format_seconds(median_ms / 1e3) in text
    (ax,) = figure.axes
    assert ax.get_xscale() == "log"
    assert len(ax.patches) == 2
    saved = figures_dir / "orders-extract-vs-range.png"
    assert saved.read_bytes().startswith(PNG_MAGIC)


def test_bars_stay_linear_for_a_small_spread(narrow_spread):
    figure = narrow_spread.plot()
    # Jupyter shows the returned figure from its PNG repr, without any pyplot backend.
    assert figure._repr_png_().startswith(PNG_MAGIC)
    (ax,) = figure.axes
    assert ax.get_xscale() == "linear"
    assert narrow_spread.headline in all_text(figure)
    # The top bar is the baseline, drawn in the warm colour.
    top_bar = min(ax.patches, key=lambda bar: bar.get_y())
    assert matplotlib.colors.to_hex(top_bar.get_facecolor()).upper() == plots.BASELINE_COLOR


def test_bars_draw_into_a_given_axes_and_save_by_title(narrow_spread, figures_dir):
    figure = Figure()
    left, right = figure.subplots(1, 2)
    returned = narrow_spread.plot(ax=right, title="Sleeps", save=True)
    assert returned is figure
    assert len(right.patches) == 2 and not left.patches
    assert (figures_dir / "sleeps.png").read_bytes().startswith(PNG_MAGIC)


def test_bars_of_a_single_variant_have_no_ratio():
    figure = compare({"alone": lambda: None}, preset="fast").plot()
    assert "faster" not in all_text(figure) and "no clear" not in all_text(figure)


def test_scaling_is_log_log_with_slopes_in_the_legend(growth, figures_dir):
    figure = growth.plot(title="Summing", save="scaling sum")
    (ax,) = figure.axes
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for label, slope in growth.slopes.items():
        assert f"{label} · slope {slope:.2f}".replace("-0.00", "0.00") in legend
    assert "slope 1" in all_text(figure)
    assert (figures_dir / "scaling-sum.png").read_bytes().startswith(PNG_MAGIC)


def test_save_makes_a_safe_file_name(figures_dir):
    figure = Figure()
    figure.add_subplot().plot([1, 2], [3, 4])
    path = plots.save(figure, "Range vs EXTRACT: 212× faster / µs.png")
    assert path == figures_dir / "range-vs-extract-212-faster-s.png"
    assert path.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="file name"):
        plots.save(figure, "!!!")


def test_style_is_idempotent_and_uses_the_course_palette():
    with matplotlib.rc_context():  # leave the global style as other tests expect it
        plots.style()
        first = {key: matplotlib.rcParams[key] for key in plots.COURSE_STYLE}
        plots.style()
        assert {key: matplotlib.rcParams[key] for key in plots.COURSE_STYLE} == first
        cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        assert cycle[0] == plots.BASELINE_COLOR


def test_variant_colors_make_the_baseline_warm_and_the_rest_distinct():
    colors = plots.variant_colors(["bad", "better", "best"], baseline="bad")
    assert colors["bad"] == plots.BASELINE_COLOR
    assert len(set(colors.values())) == 3
    many = plots.variant_colors([f"v{i}" for i in range(12)])
    assert list(many.values()).count(plots.BASELINE_COLOR) == 1


def test_public_tick_helpers_label_seconds_in_round_units():
    assert plots.format_seconds_tick(0.02) == "20 ms"
    assert plots.format_seconds_tick(1.5) == "1.5 s"
    assert plots.format_seconds_tick(0) == "0"
    figure = Figure()
    ax = figure.add_subplot()
    plots.seconds_axis(ax.yaxis)
    assert ax.yaxis.get_major_formatter()(0.0025) == "2.5 ms"
    # the old private names keep working for code written against them
    assert plots._format_tick is plots.format_seconds_tick and plots._seconds_axis is plots.seconds_axis


def test_request_timelines_draw_one_line_per_request_per_variant(figures_dir):
    spans = {"await in a loop": [(1.00, 1.01), (1.01, 1.02), (1.02, 1.03)],
             "asyncio.gather": [(5.000, 5.010), (5.001, 5.011), (5.001, 5.012)]}
    figure = plots.request_timelines(spans, titles={"asyncio.gather": "gather: 12 ms"}, suptitle="3 calls",
                                     save="timelines")
    assert len(figure.axes) == 2
    assert [len(ax.lines) for ax in figure.axes] == [3, 3]
    text = all_text(figure)
    assert "await in a loop" in text and "gather: 12 ms" in text and "3 calls" in text
    # each panel starts at its own first request, in ms: the loop's staircase ends at 30 ms
    assert max(max(line.get_xdata()) for line in figure.axes[0].lines) == pytest.approx(30)
    assert (figures_dir / "timelines.png").read_bytes().startswith(PNG_MAGIC)


def test_against_ideal_draws_measured_ideal_and_the_server_count(figures_dir):
    import pandas as pd

    table = pd.DataFrame([
        {"variant": v, "N": n, "median ms": ms, "ideal ms": ideal, "share of ideal": ideal / ms,
         "max in flight (server)": flight}
        for v, rows in (("loop", [(1, 11, 10, 1), (10, 105, 100, 1)]),
                        ("gather", [(1, 11, 10, 1), (10, 14, 10, 10)]))
        for n, ms, ideal, flight in rows])
    figure = plots.against_ideal(table, "N", "N (log)", "Wall time vs N", "ideal", baseline="loop",
                                 label_shares=True, note="10 ms per request", save=True)
    left, right = figure.axes
    assert left.get_xscale() == right.get_xscale() == "log"
    text = all_text(figure)
    assert "Wall time vs N" in text and "What the server saw" in text and "10 ms per request" in text
    assert "71% of ideal" in text  # 10 / 14
    assert left.lines[0].get_color().lower() == plots.BASELINE_COLOR.lower()
    assert (figures_dir / "wall-time-vs-n.png").exists()


def test_pool_sweep_marks_the_knee_and_the_rule(figures_dir):
    def runs(key, values):
        return {size: {key: v, f"{key}_low": v * 0.9, f"{key}_high": v * 1.1} for size, v in values.items()}

    saturation = runs("throughput", {1: 100.0, 2: 190.0, 4: 300.0, 8: 310.0})
    steady = {size: runs("p99_ms", {size: p99})[size] | {"p50_ms": p99 / 4}
              for size, p99 in {1: 400.0, 2: 50.0, 4: 20.0, 8: 25.0}.items()}
    figure = plots.pool_sweep(saturation, steady, knee=4, rule=5, rate=210, note="32 clients", save="sweep")
    left, right = figure.axes
    assert left.get_xscale() == "log" and right.get_yscale() == "log"
    text = all_text(figure)
    assert "knee: 4" in text and "(cores × 2) + 1 = 5" in text and "210 req/s" in text and "32 clients" in text
    assert (figures_dir / "sweep.png").read_bytes().startswith(PNG_MAGIC)


def test_round_trips_draw_a_panel_per_n_and_hatch_predicted_bars(figures_dir):
    import pandas as pd

    grid = pd.DataFrame([
        {"rtt_ms": rtt, "N": n, "variant": v, "seconds": s, "fastest": s * 0.9, "slowest": s * 1.1,
         "how": "predicted" if (v == "lazy" and rtt == 5 and n == 1000) else "measured"}
        for n in (100, 1000) for rtt in (0, 5) for v, s in (("lazy", 0.01 * n * (1 + rtt)), ("eager", 0.002))])
    figure = plots.round_trips(grid, ["lazy", "eager"], title="Through a network", note="hatched: predicted",
                               save=True)
    assert len(figure.axes) == 2 and all(ax.get_yscale() == "log" for ax in figure.axes)
    text = all_text(figure)
    assert "N = 100 orders" in text and "N = 1000 orders" in text and "5 ms" in text
    hatched = [patch for patch in figure.axes[1].patches if patch.get_hatch() == "//"]
    assert len(hatched) == 1
    assert (figures_dir / "through-a-network.png").exists()


def test_before_after_marks_the_fixed_rows_on_a_log_axis(figures_dir):
    figure = plots.before_after({"slow": 900.0, "fine": 5.0}, {"slow": 3.0, "fine": 5.0}, marked=["slow"],
                                title="Before and after", save=True)
    ax = figure.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["slow  ← fixed", "fine"]
    assert len(ax.patches) == 4
    assert (figures_dir / "before-and-after.png").exists()


def test_fan_out_share_draws_the_formula_and_the_simulation():
    figure = plots.fan_out_share(0.01, [1, 10, 100], [0.01, 0.1, 0.63], requests=20_000, mark=100)
    ax = figure.axes[0]
    formula, points = ax.lines[:2]
    assert formula.get_ydata()[-1] == pytest.approx(1 - 0.99 ** 100)
    assert list(points.get_ydata()) == [0.01, 0.1, 0.63]
    assert "k = 100: 63% of requests slow" in all_text(figure)


def test_lines_by_variant_and_histograms():
    import pandas as pd

    table = pd.DataFrame([{"variant": v, "n": n, "queries": q, "p99": p}
                          for v, rows in (("plain", [(1, 1, 40), (100, 100, 2500)]), ("lease", [(1, 1, 40), (100, 1, 190)]))
                          for n, q, p in rows])
    figure = plots.lines_by_variant(table, "n", {"queries": ("Queries", "count"), "p99": ("p99", "ms")},
                                    xlabel="concurrent misses")
    assert [ax.get_title(loc="left") for ax in figure.axes] == ["Queries", "p99"]
    assert [len(ax.lines) for ax in figure.axes] == [2, 2]
    assert figure.axes[0].lines[0].get_color().lower() == plots.BASELINE_COLOR.lower()
    figure = plots.histograms({"same TTL": [60.0] * 10, "jittered": [60.5, 65.5, 70.5]}, bins=[59, 60, 61, 66, 71],
                              xlabel="s", ylabel="keys", title="expiries")
    assert len(figure.axes[0].patches) == 8 and "expiries" in all_text(figure)
