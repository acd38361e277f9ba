"""The progress mechanism: monotone counts reaching the total, nested trackers, silence outside a kernel."""
from __future__ import annotations

import re
import time

import pytest

from perflab import complexity, harness, latency, memory, progress


def _collect():
    states: list[progress.State] = []
    return states, progress.listen(states.append)


def _check_counts(states: list[progress.State]) -> None:
    assert states, "no progress was reported"
    done = [s.done for s in states]
    assert done == sorted(done), f"done went backwards: {done}"
    assert all(s.done <= s.total for s in states)
    last = states[-1]
    assert last.finished and last.done == last.total > 0
    assert sum(s.finished for s in states) == 1


def test_compare_reports_rounds_monotone_to_total(capsys):
    states, listening = _collect()
    with listening:
        res = harness.compare({"a": lambda: sum(range(50)), "b": lambda: sum(range(60)) - 1770 + 1225},
                              preset="fast")
    _check_counts(states)
    rounds = len({s.round for s in res.samples})
    assert states[-1].done == rounds and states[-1].unit == "rounds"
    assert states[-1].line().startswith("measured 2 variants × ")
    assert any("timing 'a'" in s.detail for s in states)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_sweep_reports_sizes_with_the_inner_rounds_nested(capsys):
    states, listening = _collect()
    with listening:
        harness.sweep({"sum": lambda n: sum(range(n))}, sizes=[10, 100, 1000], setup=lambda n: n, preset="fast")
    _check_counts(states)
    assert states[-1].unit == "sizes" and states[-1].done == 3
    assert any("n=100" in s.detail and "rounds" in s.detail for s in states)   # the inner compare's rounds
    assert capsys.readouterr().out == ""


def test_other_front_ends_report(capsys):
    for run, unit in ((lambda: latency.latencies({"f": lambda: 1}, calls=30, warmup=0), "calls"),
                      (lambda: memory.compare_peaks({"a": lambda: [0] * 10, "b": lambda: [0] * 10}), "variants"),
                      (lambda: complexity.count_sweep({"f": lambda n: n}, sizes=[1, 2], setup=lambda n: n), "sizes")):
        states, listening = _collect()
        with listening:
            run()
        _check_counts(states)
        assert states[-1].unit == unit
    assert capsys.readouterr().out == ""


def test_a_time_bound_run_reports_tenths_of_its_seconds_and_nests(capsys):
    states, listening = _collect()
    with listening, progress.track(2, unit="routers", what="two runs") as outer:
        for _ in range(2):
            with progress.track_seconds(0.3, what="reads") as tick:
                end = time.perf_counter() + 0.35
                while time.perf_counter() < end:
                    time.sleep(0.05)
                    tick()
            outer.advance()
    _check_counts(states)
    assert states[-1].unit == "routers" and states[-1].done == 2
    assert any("/0.3 s" in s.detail for s in states)   # the inner run's seconds, shown on the outer line
    with progress.listen(states.append), progress.track_seconds(0.2, what="200 writes/s") as tick:
        time.sleep(0.25)
        tick()
    assert re.fullmatch(r"measured 200 writes/s for 0\.\d s", states[-1].line())
    assert capsys.readouterr().out == ""


def test_a_failed_measurement_does_not_claim_it_finished():
    states, listening = _collect()
    with listening, pytest.raises(harness.AnswerMismatch):
        harness.compare({"a": lambda: 1, "b": lambda: 2}, preset="fast")
    assert states[-1].failed and not states[-1].line().startswith("measured")


def test_nothing_is_printed_outside_a_kernel_even_for_long_measurements(capsys, monkeypatch):
    monkeypatch.setattr(progress, "SHOW_AFTER", 0.0)
    monkeypatch.setattr(progress, "REFRESH", 0.0)
    with progress.track(3, unit="steps", what="a thing") as step:
        for i in range(3):
            time.sleep(0.01)
            step.update(i + 1)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


class _FakeHandle:
    def __init__(self, shown):
        self.shown = shown

    def update(self, bundle, raw=True):
        self.shown.append(bundle)


def test_in_a_kernel_one_line_appears_after_the_delay_and_collapses(monkeypatch):
    shown: list[dict] = []

    def fake_show(self, state):
        bundle = self._bundle(state)
        if self.handle is None:
            self.handle = _FakeHandle(shown)
            shown.append({"new": True, **bundle})
        else:
            self.handle.update(bundle)

    monkeypatch.setattr(progress, "_in_kernel", lambda: True)
    monkeypatch.setattr(progress._Line, "show", fake_show)
    # Short: nothing at all.
    with progress.track(2, what="quick") as step:
        step.update(1)
        step.update(2)
    assert shown == []
    # Long (the delay set to 0): one display, updated in place, ending on the collapsed line.
    monkeypatch.setattr(progress, "SHOW_AFTER", 0.0)
    monkeypatch.setattr(progress, "REFRESH", 0.0)
    with progress.track(4, unit="rounds", what="6 variants") as step:
        for i in range(4):
            step.update(i + 1, detail=f"timing 'v{i}'")
    assert sum("new" in b for b in shown) == 1
    assert shown[-1]["text/plain"].startswith("measured 6 variants × 4 rounds in ")
    assert "timing 'v3'" in shown[-2]["text/plain"]
