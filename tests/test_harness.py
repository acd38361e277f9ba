"""Tests for perflab.harness: real timings of variants whose ratio is known, plus deterministic
checks of the statistics with a fake clock. All use the ``fast`` preset (~0.5 s per comparison)."""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import math
import threading
import time

import numpy as np
import pandas as pd
import pytest

from perflab import harness
from perflab.harness import (
    PRESETS,
    AnswerMismatch,
    Comparison,
    Preset,
    Ratio,
    Sweep,
    compare,
    resolve_preset,
    run_async,
    sweep,
)


def nap_10ms():
    time.sleep(0.010)


def nap_1ms():
    time.sleep(0.001)


class FakeClock:
    """Stands in for both of the harness's clocks (samples and budget): time moves only when a
    variant says how long it 'took', so neither machine load nor gc.collect() can change a result."""

    def __init__(self):
        self.now_ns = 0

    def ns(self) -> int:
        return self.now_ns

    def seconds(self) -> float:
        return self.now_ns / 1e9

    def advance(self, ns: int) -> None:
        self.now_ns += ns


@pytest.fixture
def fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(harness, "perf_counter_ns", clock.ns)
    monkeypatch.setattr(harness, "perf_counter", clock.seconds)
    return clock


# ---- the headline numbers ------------------------------------------------------------------------

def test_known_ratio_of_sleeps_is_recovered_with_a_clear_ci():
    res = compare({"sleep 10 ms": nap_10ms, "sleep 1 ms": nap_1ms}, preset="fast")
    ratio = res.ratio()
    assert (ratio.slow, ratio.fast) == ("sleep 10 ms", "sleep 1 ms")
    # time.sleep never returns early and overshoots by a similar ε (~0.1 ms on an idle machine)
    # each time, so the true ratio is (10 + ε) / (1 + ε): 10 with a perfect timer, ~9.2 measured
    # here, ~8.3 with ε = 0.2 ms. A loaded machine wakes sleepers later still, and only ever later
    # (make test keeps both cores busy: a median ratio of 6.1x, CI 5.7x-6.7x, was measured there),
    # so the median ratio is only asked to be clearly far from 1, and the fastest sample of each
    # variant, which load can only delay, carries the known ratio: never under its sleep, and their
    # ratio near 10 (9.4 here, idle or beside 4 busy loops). A harness that mixed up loops, units or
    # variants would be off by 2x or more.
    assert ratio.value >= 3, str(ratio)
    fastest = {label: min(s.seconds for s in res.samples if s.variant == label) for label in res.labels}
    assert fastest["sleep 10 ms"] >= 0.010 and fastest["sleep 1 ms"] >= 0.001, fastest
    assert 7 <= fastest["sleep 10 ms"] / fastest["sleep 1 ms"] <= 10.5, fastest
    assert ratio.ci_low <= ratio.value <= ratio.ci_high
    assert ratio.clear
    assert "faster" in str(ratio)


def test_identical_variants_show_no_clear_difference():
    # A 95% CI excludes the truth in ~5% of runs by construction, so a single run may rightly say
    # "clear"; three such runs in a row (~0.01%) mean the CI is broken, not unlucky.
    def work():
        return sum(range(500))

    ratios = []
    for _ in range(3):
        ratio = compare({"a": work, "b": work}, preset="fast").ratio()
        ratios.append(ratio)
        if not ratio.clear:
            break
    assert not ratios[-1].clear, [str(r) for r in ratios]
    assert ratios[-1].ci_low <= 1 <= ratios[-1].ci_high
    assert str(ratios[-1]).startswith("no clear difference (95% CI ")


def test_fake_clock_gives_exact_statistics(fake_clock, monkeypatch):
    collections = []
    real_collect = harness.gc.collect
    monkeypatch.setattr(harness.gc, "collect", lambda *a: collections.append(a) or real_collect(*a))
    gc_enabled_during_calls = set()

    def slow():
        fake_clock.advance(4_000)
        gc_enabled_during_calls.add(harness.gc.isenabled())
        return "same"

    def fast():
        fake_clock.advance(1_000)
        return "same"

    res = compare({"slow": slow, "fast": fast}, preset="fast")
    # A full collection before every sample (calibration: 10 + 12 of them), plus one before the
    # heap is frozen for the measurement, the collector left on.
    assert len(collections) == len(res.runs) + 10 + 12 + 1 and set(collections) == {()}
    assert gc_enabled_during_calls == {True}
    assert harness.gc.get_freeze_count() == 0, "the heap must be unfrozen after measuring"
    summary = res.summary.set_index("variant")
    # 2 ms target: 1 µs calls need 2048 loops, 4 µs calls 512.
    assert summary.loc["fast", "loops"] == 2048 and summary.loc["slow", "loops"] == 512
    assert summary.loc["slow", "median_ms"] == pytest.approx(0.004)
    assert summary.loc["fast", "median_ms"] == pytest.approx(0.001)
    assert summary.loc["fast", "stdev_ms"] == pytest.approx(0.0)
    ratio = res.ratio()
    assert (ratio.value, ratio.ci_low, ratio.ci_high) == pytest.approx((4.0, 4.0, 4.0))
    assert str(ratio) == "4.0x faster (95% CI 4.0x–4.0x)"
    assert res.rounds == 12  # no fake time is spent outside variants: the budget never binds


def test_median_ci_uses_binomial_order_statistics():
    low, high, exact = harness._median_ci(list(range(1, 101)))
    assert (low, high, exact) == (40, 61, True)  # the textbook ranks for n = 100
    assert harness._median_ci([5, 1, 4, 2, 3, 6]) == (1, 6, True)  # n = 6: min/max already is 96.9%
    assert harness._median_ci([3, 1, 2]) == (1, 3, False)  # no exact 95% CI: flagged fallback


def test_ratio_bootstrap_is_reproducible_and_paired():
    rng = np.random.default_rng(7)
    drift = np.linspace(1, 3, 20)  # the machine slows down 3x over the run, for both variants
    slow = 10 * drift * rng.uniform(0.99, 1.01, 20)
    fast = 1 * drift * rng.uniform(0.99, 1.01, 20)
    first = harness._bootstrap_ratio(slow, fast)
    assert first == harness._bootstrap_ratio(slow, fast)
    value, low, high = first
    assert value == pytest.approx(10, rel=0.02)
    assert low <= value <= high
    # Resampling rounds keeps each round's pair together, so the drift cancels: the CI is ±1%.
    # Resampling the two variants independently would give ~7.3x–13.8x here.
    assert high / low < 1.05
    # A ratio of medians: one wild sample (a GC pause, a noisy neighbour) does not move it.
    assert harness._bootstrap_ratio(np.array([1.0, 1, 1, 1, 1, 100]), np.ones(6))[0] == 1.0


# ---- Ratio formatting ----------------------------------------------------------------------------

def test_ratio_text():
    assert str(Ratio("EXTRACT", "range", 212.3, 190.2, 240.4)) == "212x faster (95% CI 190x–240x)"
    assert Ratio("EXTRACT", "range", 212.3, 190.2, 240.4).headline == (
        "range: 212x faster than EXTRACT (95% CI 190x–240x)")
    assert str(Ratio("a", "b", 9.46, 9.1, 9.8)) == "9.5x faster (95% CI 9.1x–9.8x)"
    assert str(Ratio("a", "b", 42.34, 40.0, 45.0)) == "42.3x faster (95% CI 40.0x–45.0x)"
    even = Ratio("a", "b", 1.01, 0.92, 1.1)
    assert not even.clear
    assert str(even) == "no clear difference (95% CI 0.92x–1.10x)"
    assert even.headline == "b vs a: no clear difference (95% CI 0.92x–1.10x)"
    worse = Ratio("a", "b", 0.5, 0.4, 0.625)
    assert worse.clear
    assert str(worse) == "2.0x slower (95% CI 1.6x–2.5x)"
    assert worse.headline == "b: 2.0x slower than a (95% CI 1.6x–2.5x)"
    assert not Ratio("a", "b", 1.2, 1.0, 1.4).clear  # touching 1 is not excluding it


def test_format_seconds_picks_readable_units():
    assert harness.format_seconds(0.0000581) == "58.1 µs"
    assert harness.format_seconds(0.0123) == "12.3 ms"
    assert harness.format_seconds(2.5) == "2.50 s"
    assert harness.format_seconds(212e-9) == "212 ns"
    assert harness.format_seconds(0.0000581, "ms") == "0.06 ms"
    assert harness.format_seconds(math.nan) == "n/a"


# ---- correctness first ---------------------------------------------------------------------------

def test_mismatch_raises_naming_both_variants_before_any_timing():
    calls = []

    def right():
        calls.append("right")
        return [1, 2, 3]

    def wrong():
        calls.append("wrong")
        return [1, 2, 4]

    with pytest.raises(AnswerMismatch) as caught:
        compare({"right answer": right, "wrong answer": wrong}, preset="fast")
    message = str(caught.value)
    assert "'wrong answer'" in message and "'right answer'" in message
    assert "[1, 2, 3]" in message and "[1, 2, 4]" in message
    assert isinstance(caught.value, ValueError)
    assert calls == ["right", "wrong"]  # each called once, nothing timed


def test_equal_and_check_options():
    variants = {"sum": lambda: 0.1 + 0.2, "literal": lambda: 0.3}
    with pytest.raises(AnswerMismatch):
        compare(variants, preset="fast")
    assert compare(variants, preset="fast", equal=math.isclose).answers_checked
    unchecked = compare({"one": lambda: 1, "two": lambda: 2}, preset="fast", check=False)
    assert not unchecked.answers_checked
    assert "answers NOT checked" in repr(unchecked)


def test_default_equality_handles_dataframes_and_arrays():
    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, np.nan]})
    assert harness.default_equal(frame, frame.copy())
    assert not harness.default_equal(frame, frame.assign(a=[1, 3]))
    assert harness.default_equal(np.array([1.0, np.nan]), np.array([1.0, np.nan]))
    assert not harness.default_equal(np.array([1, 2]), np.array([1, 2, 3]))
    assert not harness.default_equal(frame, [1, 2])
    with pytest.raises(AnswerMismatch, match="DataFrame of shape"):
        compare({"x": lambda: frame, "y": lambda: frame.assign(a=[9, 9])}, preset="fast")


def test_variants_from_a_list_are_labelled_by_docstring_then_name():
    def by_extract():
        """EXTRACT(year) — no index

        More text that is not the label."""
        return 1

    def by_range():
        return 1

    def count_to(n):
        """count to n"""
        return 1 if n else 1

    res = compare([by_extract, by_range, functools.partial(count_to, 3)], preset="fast")
    assert res.labels == ("EXTRACT(year) — no index", "by_range", "count to n")
    assert res.baseline == "EXTRACT(year) — no index"
    with pytest.raises(ValueError, match="share the label"):
        compare([by_range, by_range], preset="fast")


def test_bad_inputs_are_explained():
    async def fetch():
        return 1

    with pytest.raises(TypeError, match="drop the parentheses"):
        compare({"oops": fetch()}, preset="fast")
    with pytest.raises(TypeError, match="args must be a tuple"):
        compare({"a": len}, args="abc", preset="fast")
    with pytest.raises(ValueError, match="baseline"):
        compare({"a": lambda: 1}, preset="fast", baseline="nope")


def test_exception_in_a_variant_names_it():
    def broken():
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError) as caught:
        compare({"fine": lambda: None, "broken": broken}, preset="fast")
    assert any("'broken'" in note for note in caught.value.__notes__)


# ---- the measuring procedure ---------------------------------------------------------------------

def test_rounds_rotate_the_order_of_variants():
    res = compare({"a": lambda: 1, "b": lambda: 1, "c": lambda: 1}, preset="fast")
    runs = res.runs
    assert len(runs) == 3 * res.rounds and res.rounds >= 6
    for round_number, samples in runs.groupby("round"):
        ordered = samples.sort_values("position")
        expected = [res.labels[(round_number + p) % 3] for p in range(3)]
        assert list(ordered.variant) == expected, round_number
        assert list(ordered.position) == [0, 1, 2]


def test_fast_calls_are_looped_and_reported_per_call():
    res = compare({"noop": lambda: None, "nap": nap_1ms}, preset="fast")
    summary = res.summary.set_index("variant")
    assert summary.loc["noop", "loops"] > 1000  # ~50 ns calls need thousands per 2 ms sample
    assert summary.loc["nap", "loops"] in (1, 2)  # ~1.1 ms calls: two reach 2 ms
    assert summary.loc["noop", "median_ms"] < 0.01  # seconds are per call, not per sample
    assert (res.runs.groupby("variant").loops.nunique() == 1).all()  # frozen after calibration
    assert list(res.summary.columns) == ["variant", "samples", "loops", "median_ms", "ci_low_ms",
                                         "ci_high_ms", "p95_ms", "p99_ms", "mean_ms", "stdev_ms"]
    assert summary.p95_ms.isna().all()  # fewer than 100 samples


def test_budget_keeps_min_rounds_for_a_really_slow_variant():
    def nap_30ms():
        time.sleep(0.030)

    started = time.perf_counter()
    res = compare({"slow": nap_30ms}, preset="fast", max_seconds=0.05)
    took = time.perf_counter() - started
    assert res.rounds == 6  # the floor wins over a budget that allows ~1 sample
    assert any("over the 0.05 s budget" in note for note in res.notes)
    assert "note: took" in repr(res)
    assert took < 3.0  # 8 calls of 30 ms plus 8 gc.collect(): not max_rounds' worth


def test_budget_stops_before_a_round_that_would_overrun(fake_clock):
    def slow():
        fake_clock.advance(30_000_000)  # 30 ms per call, on the fake clock

    def quick():
        fake_clock.advance(1_000_000)

    # Before the rounds: answer checks 30 + 1 ms, calibration 30 ms (slow: one loop is enough) and
    # 1 + 2 ms (quick: one loop, then two) = 64 ms. Each round then costs 30 + 2 = 32 ms. After round R, 64 + 32 R ms have passed and
    # the next round would end at 64 + 32 (R + 1): that overruns 0.3 s from R = 7 on.
    res = compare({"slow": slow, "quick": quick}, preset="fast", max_seconds=0.3)
    assert res.rounds == 7
    assert res.elapsed_seconds == pytest.approx(0.064 + 7 * 0.032)
    assert res.elapsed_seconds <= 0.3 and not res.notes
    generous = compare({"slow": slow, "quick": quick}, preset="fast", max_seconds=10)
    assert generous.rounds == PRESETS["fast"].max_rounds


def test_fixed_loops_skip_calibration(fake_clock):
    calls = []

    def slow():
        calls.append(1)
        fake_clock.advance(30_000_000)  # 30 ms per call: calibration could only settle on 1 loop

    res = compare({"slow": slow}, preset="fast", loops=1, max_seconds=10)
    assert res.rounds == PRESETS["fast"].max_rounds
    assert len(calls) == 1 + res.rounds  # the answer check, then one call per sample: no calibration
    assert (res.runs.loops == 1).all()
    with pytest.raises(ValueError, match="loops"):
        compare({"slow": slow}, preset="fast", loops=0)


def test_presets_and_environment_override(monkeypatch):
    monkeypatch.setenv("PERFLAB_PRESET", "fast")
    assert compare({"a": lambda: 1}).preset is PRESETS["fast"]
    monkeypatch.delenv("PERFLAB_PRESET")
    assert resolve_preset(None).name == "default"
    assert resolve_preset("Rigorous") is PRESETS["rigorous"]
    with pytest.raises(ValueError, match="fast, default, rigorous"):
        resolve_preset("quick")
    monkeypatch.setenv("PERFLAB_PRESET", "turbo")
    with pytest.raises(ValueError, match="PERFLAB_PRESET"):
        resolve_preset(None)
    with pytest.raises(ValueError, match="below 6"):
        Preset("sloppy", min_rounds=3, max_rounds=5, target_sample_seconds=0.001, budget_seconds=1)
    for preset in PRESETS.values():
        assert preset.min_rounds >= 6 and preset.description


# ---- async ---------------------------------------------------------------------------------------

LOOPS_SEEN: set = set()


async def async_nap_5ms():
    LOOPS_SEEN.add((id(asyncio.get_running_loop()), threading.current_thread().name))
    await asyncio.sleep(0.005)
    return "done"


async def async_nap_1ms():
    LOOPS_SEEN.add((id(asyncio.get_running_loop()), threading.current_thread().name))
    await asyncio.sleep(0.001)
    return "done"


def test_async_variants_inside_an_already_running_loop():
    LOOPS_SEEN.clear()

    async def notebook_cell():
        # Like a Jupyter cell: a loop is running in this very thread, and compare() is called
        # synchronously from it. asyncio.run would fail here; the harness's own loop must not.
        caller_loop = asyncio.get_running_loop()
        return caller_loop, compare({"5 ms": async_nap_5ms, "1 ms": async_nap_1ms}, preset="fast")

    caller_loop, res = asyncio.run(notebook_cell())
    assert res.async_variants == ("5 ms", "1 ms")
    ratio = res.ratio()
    assert ratio.clear and ratio.value > 1, str(ratio)
    # asyncio.sleep wakes up ~0.1 ms late: (5 + ε) / (1 + ε) is ~4.5. A loaded machine wakes it later still
    # (make test's 4 processes keep both cores busy: 2.6x was measured), and only ever later, so the
    # fastest sample of each variant is the one to read: never under its sleep, and near it.
    fastest = {label: min(s.seconds for s in res.samples if s.variant == label) for label in res.labels}
    assert fastest["5 ms"] >= 0.005 and fastest["1 ms"] >= 0.001, fastest
    assert 3.0 <= fastest["5 ms"] / fastest["1 ms"] <= 5.5, fastest
    again = compare({"1 ms": async_nap_1ms}, preset="fast")
    assert again.async_variants == ("1 ms",)
    # One long-lived loop in the harness's thread served every call of both comparisons.
    assert len(LOOPS_SEEN) == 1
    ((loop_id, thread_name),) = LOOPS_SEEN
    assert thread_name == "perflab-harness-loop"
    assert loop_id != id(caller_loop)


def test_callable_returning_an_awaitable_is_awaited():
    res = compare({"lambda": lambda: asyncio.sleep(0.001, result=42),
                   "async def": async_nap_1ms}, preset="fast", check=False)
    assert set(res.async_variants) == {"lambda", "async def"}
    with pytest.raises(AnswerMismatch, match="42"):
        compare({"lambda": lambda: asyncio.sleep(0, result=42), "async def": async_nap_1ms},
                preset="fast")


def test_run_async_uses_the_harness_loop():
    async def which_thread():
        return threading.current_thread().name

    assert run_async(which_thread()) == "perflab-harness-loop"


# ---- results -------------------------------------------------------------------------------------

def test_comparison_is_immutable_and_serialisable():
    res = compare({"slow": nap_1ms, "fast": lambda: None}, preset="fast")
    assert isinstance(res, Comparison)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.baseline = "fast"
    runs = res.runs
    runs["seconds"] = 0.0
    assert (res.runs.seconds > 0).all()  # callers get copies
    assert list(runs.columns) == ["variant", "round", "position", "loops", "seconds"]
    data = res.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert data["summary"][0]["p95_ms"] is None
    assert data["preset"] == "fast" and data["answers_checked"] is True
    assert json.loads(text)["ratio"]["fast"] == "fast"
    assert data["headline"].startswith("fast: ")
    ratios = res.ratios
    assert list(ratios.variant) == ["fast"] and ratios.ratio.iloc[0] > 10
    assert res.ratio("fast", "slow").value == pytest.approx(1 / res.ratio().value)
    table = repr(res)
    assert "slow" in table and "95% CI" in table and res.headline in table
    assert res.headline in res._repr_html_().replace("&#x27;", "'")


def test_default_ratio_is_baseline_against_the_fastest_other():
    res = compare({"1 ms": nap_1ms, "noop": lambda: None, "10 ms": nap_10ms}, preset="fast")
    assert (res.ratio().slow, res.ratio().fast) == ("1 ms", "noop")
    by_last = compare({"1 ms": nap_1ms, "10 ms": nap_10ms}, preset="fast", baseline="10 ms")
    assert by_last.ratio().slow == "10 ms"
    assert compare({"only": lambda: 1}, preset="fast").headline is None


# ---- sweep ---------------------------------------------------------------------------------------

def test_sweep_finds_linear_and_constant_growth():
    res = sweep({"sum(range(n))": lambda n: sum(range(n)),
                 "n(n-1)/2": lambda n: n * (n - 1) // 2},
                sizes=[1_000_000, 1_000, 10_000, 100_000], setup=lambda n: n, preset="fast")
    assert isinstance(res, Sweep)
    # A 1000x range of n: an error of 40% in one median moves the fitted slope by < 0.1, so
    # the bounds below hold on a loaded machine too, while O(n) vs O(1) stays unmistakable.
    assert res.sizes == (1_000, 10_000, 100_000, 1_000_000)
    slopes = res.slopes
    assert 0.8 <= slopes["sum(range(n))"] <= 1.2, slopes
    assert abs(slopes["n(n-1)/2"]) < 0.3, slopes
    assert set(res.comparisons) == set(res.sizes)
    assert list(res.summary.columns) == ["variant", "n", "median_ms", "ci_low_ms", "ci_high_ms"]
    assert len(res.summary) == 8
    assert {"n", "variant", "round", "position", "loops", "seconds"} <= set(res.runs.columns)
    json.dumps(res.to_dict(), allow_nan=False)
    assert "sum(range(n))" in repr(res) and "slope" in repr(res)


def test_sweep_max_seconds_is_each_sizes_budget():
    # 30 ms a call: the default preset's 15 s budget would allow its 20 rounds; 0.1 s leaves its 10 minimum.
    res = sweep({"nap": lambda n: time.sleep(0.03)}, sizes=[1, 2], setup=lambda n: n, max_seconds=0.1)
    assert all(c.rounds == c.preset.min_rounds for c in res.measured), [c.rounds for c in res.measured]


def test_sweep_skips_a_variant_past_max_ms_and_records_it():
    def sleepy(n, seconds_per_item):
        time.sleep(n * seconds_per_item)
        return n

    def instant(n, seconds_per_item):
        return n

    # setup returns a tuple: it is spread into the two arguments. 0.1 ms, then 20 ms > 8 ms: not run from
    # 40,000 (wide margins: `make test` runs this beside other tests, and a loaded machine stretched a 0.5 ms
    # sleep past a 1.5 ms limit once).
    res = sweep({"sleepy": sleepy, "instant": instant}, sizes=[100, 20_000, 40_000, 80_000],
                setup=lambda n: (n, 1e-6), preset="fast", max_ms=8)
    assert dict(res.skipped) == {"sleepy": 40_000}
    summary = res.summary
    assert sorted(summary[summary.variant == "sleepy"].n) == [100, 20_000]
    assert sorted(summary[summary.variant == "instant"].n) == [100, 20_000, 40_000, 80_000]
    assert "skipped from n=40,000" in repr(res)
    only_one = sweep({"sleepy": sleepy}, sizes=[2_000, 4_000], setup=lambda n: (n, 1e-6),
                     preset="fast", max_ms=1.0)
    assert only_one.measured_sizes == (2_000,)
    assert math.isnan(only_one.slopes["sleepy"])
    assert json.loads(json.dumps(only_one.to_dict(), allow_nan=False))["slopes"] == {"sleepy": None}
