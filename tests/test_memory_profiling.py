"""perflab.memory, perflab.complexity, perflab.profiling and their plots (pure Python, no servers)."""
import gc
import math

import pytest

from perflab import complexity, memory, plots, profiling


def test_peak_measures_what_a_call_allocates_and_what_it_keeps():
    big = memory.peak(lambda: sum([i for i in range(200_000)]), label="list")
    small = memory.peak(lambda: sum(i for i in range(200_000)), label="generator")
    assert big.result == small.result
    assert 200_000 * 28 < big.peak_bytes < 200_000 * 50        # ints + list slots, give or take
    assert small.peak_bytes < 10_000 and big.retained_bytes < 10_000
    kept = memory.peak(lambda: list(range(100_000)))
    assert kept.retained_bytes > 100_000 * 28


def test_compare_peaks_checks_answers_and_reports_a_headline():
    table = memory.compare_peaks({"list": lambda: sum([i for i in range(50_000)]),
                                  "generator": lambda: sum(i for i in range(50_000))})
    assert table.ratio() > 100 and "generator" in table.headline and table.to_dict()["kind"] == "memory"
    with pytest.raises(ValueError, match="different answer"):
        memory.compare_peaks({"a": lambda: 1, "b": lambda: 2})


def test_format_bytes():
    assert memory.format_bytes(48_213_000) == "48.2 MB"
    assert memory.format_bytes(512) == "512 B" and memory.format_bytes(1_500) == "1.5 kB"


def test_disk_figures_count_in_1024s_everywhere_the_course_prints_them():
    # `make run`'s last line said ".perflab/ holds 1.1 GB" while the report's environment table said
    # "1.21 GB" for the same 1,209,626,056 bytes; both now count as du -h and df -h do.
    from perflab import report, units

    assert units.format_disk(1_209_626_056) == "1.1 GB"
    assert units.format_disk(639_532_646) == "609.9 MB"
    assert units.format_disk(512) == "512 B" and units.format_disk(None) == "n/a"
    table = report._environment_table({}, {"state_bytes": 1_209_626_056, "build_bytes": 18_664_000})
    assert "<td>1.1 GB</td>" in table and "<td>17.8 MB</td>" in table


def test_frozen_heap_makes_collections_cheap_and_unfreezes():
    with memory.frozen_heap() as frozen:
        assert gc.get_freeze_count() > 0 and "objects" in repr(frozen)
    assert gc.get_freeze_count() == 0


def test_count_sweep_slopes_are_exact_for_list_and_set_lookups():
    def make(n):
        return complexity.counted(range(n)), complexity.counted(range(0, 2 * n, 2))

    growth = complexity.count_sweep({"list": lambda a, b: [x for x in a if x in b],
                                     "set": lambda a, b: (lambda s: [x for x in a if x in s])(set(b))},
                                    sizes=[100, 200, 400, 800], setup=make)
    assert growth.slopes["list"] == pytest.approx(2.0, abs=0.1)
    assert growth.slopes["set"] == pytest.approx(1.0, abs=0.1)
    assert complexity.describe_slope(1.97) == "quadratic" and complexity.describe_slope(1.05) == "linear"
    assert math.isnan(complexity.fitted_slope([10], [5]))


def _leaf(n):
    return sum(range(n))


def _middle(n):
    results = []
    for _ in range(20):
        results.append(_leaf(n))
    return results


def _entry(n):
    return _middle(n), _leaf(10)


def test_profile_table_ranking_and_callers():
    measured = profiling.profile(_entry, 20_000)
    assert measured.result[1] == 45
    table = measured.table("cumulative", limit=None)
    assert {"function", "calls", "own s", "cumulative s"} <= set(table.columns)
    assert measured.seconds_of("_leaf")[2] == 21
    assert measured.top(["_leaf", "_middle"]) in ("_leaf", "_middle")
    assert measured.ranking(["_middle", "_leaf"])[0][1] >= measured.ranking(["_middle", "_leaf"])[1][1]
    callers = measured.callers("_leaf")
    assert set(callers["called by"].str.split().str[0]) == {"_middle", "_entry"}
    assert "function calls" in measured.text()
    assert "_leaf" in profiling.line_profile(_middle, 1_000)


def test_flame_graph_explains_itself_when_py_spy_is_missing(monkeypatch):
    monkeypatch.setattr(profiling, "py_spy_path", lambda: None)
    graph = profiling.flame_graph(_leaf, 10, seconds=0.1)
    assert not graph.ok and "py-spy" in graph.problem and "No flame graph" in graph._repr_html_()


def test_new_plots_draw_and_save(tmp_path, monkeypatch):
    from perflab import paths

    monkeypatch.setattr(paths, "FIGURES_DIR", tmp_path)
    peaks = memory.compare_peaks({"list": lambda: sum([i for i in range(10_000)]),
                                  "generator": lambda: sum(i for i in range(10_000))})
    peaks.plot(save="memory")
    plots.waterfall([("start", 0.8), ("fix 1", 0.2), ("fix 2", 0.25)], save="waterfall")
    plots.waterfall([("start", 4e6), ("fix", 5e5)], unit="bytes", save="waterfall-bytes")
    profiling.profile(_entry, 1_000).plot(save="profile")
    assert {p.name for p in tmp_path.glob("*.png")} == {"memory.png", "waterfall.png", "waterfall-bytes.png",
                                                        "profile.png"}
