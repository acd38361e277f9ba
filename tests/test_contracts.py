"""The noise gate of every lab's speed checks (`perflab.grading.contracts`): a quiet run is judged; a noisy
run is judged only when the noise it measured could not flip the verdict; otherwise it is measured again, and
after the last attempt the check is inconclusive, never failed.

The timings are made up (`harness.compare` replaced by a table of ratios), so these tests decide nothing by
the clock."""
import pytest

from perflab import harness
from perflab.grading import contracts
from perflab.grading.grader import Inconclusive


class Run:
    """A stand-in for a `harness.Comparison`: ``ratios[(slow, fast)] = (value, ci_low, ci_high)``."""

    def __init__(self, gate: tuple, gain: tuple, reference_gain: tuple = (10.0, 9.0, 11.0)):
        self.ratios = {("reference", "reference again"): (1.0, *gate), ("original", "submission"): gain,
                       ("original", "reference"): reference_gain}

    def ratio(self, slow: str, fast: str) -> harness.Ratio:
        return harness.Ratio(slow, fast, *self.ratios[(slow, fast)])


@pytest.fixture()
def runs(monkeypatch):
    """Feed `measure_gated` these runs, one per attempt; ``runs.calls`` counts the attempts."""
    class Feed(list):
        calls = 0

    feed = Feed()

    def compare(variants, **kwargs):
        feed.calls += 1
        return feed[min(feed.calls, len(feed)) - 1]

    monkeypatch.setattr(contracts.harness, "compare", compare)
    return feed


def _measure(decided=None):
    return contracts.measure_gated(lambda: 1, lambda: 1, lambda: 1, decided=decided)


def test_a_quiet_run_is_judged_at_once(runs):
    runs.append(Run(gate=(0.9, 1.1), gain=(5.5, 5.0, 6.0)))
    result = _measure(contracts.speedup_decided())
    assert runs.calls == 1
    passed = contracts.speedup_verdict(result, "f()", "hint")
    assert passed.passed and "busy machine" not in passed.message


def test_a_noisy_run_far_from_the_mark_is_judged_and_says_it_was_noisy(runs):
    # Needed: half the reference's 10x = 5x. Measured 20x (CI 18x-22x) with the reference 1.6x off itself:
    # even 18 / 1.6 = 11x is above 5x.
    runs.append(Run(gate=(0.7, 1.6), gain=(20.0, 18.0, 22.0)))
    result = _measure(contracts.speedup_decided())
    assert runs.calls == 1
    verdict = contracts.speedup_verdict(result, "f()", "hint")
    assert verdict.passed and "busy machine" in verdict.message and "1.60x" in verdict.message


def test_a_noisy_run_of_a_clearly_slow_answer_fails_at_once(runs):
    # 1.0x (CI 0.9x-1.1x) where 5x is needed: 1.1 x 1.6 = 1.8x is still short of it.
    runs.append(Run(gate=(0.7, 1.6), gain=(1.0, 0.9, 1.1)))
    result = _measure(contracts.speedup_decided())
    assert runs.calls == 1
    verdict = contracts.speedup_verdict(result, "f()", "hint")
    assert verdict.status == "failed" and "busy machine" in verdict.message


def test_a_noisy_run_near_the_mark_is_measured_again_then_judged_when_quiet(runs):
    # 6x (CI 5.5x-6.5x) against a 5x mark: 5.5 / 1.6 = 3.4x, within reach of the noise.
    runs.extend([Run(gate=(0.7, 1.6), gain=(6.0, 5.5, 6.5)), Run(gate=(0.9, 1.1), gain=(6.0, 5.5, 6.5))])
    result = _measure(contracts.speedup_decided())
    assert runs.calls == 2 and contracts.speedup_verdict(result, "f()", "hint").passed


def test_noise_near_the_mark_every_time_is_inconclusive_not_failed(runs):
    runs.append(Run(gate=(0.7, 1.6), gain=(4.5, 4.0, 5.0)))
    with pytest.raises(Inconclusive, match="too noisy"):
        _measure(contracts.speedup_decided())
    assert runs.calls == contracts.NOISE_ATTEMPTS


def test_without_a_decision_rule_a_noisy_run_is_always_measured_again(runs):
    runs.append(Run(gate=(0.7, 1.6), gain=(20.0, 18.0, 22.0)))
    with pytest.raises(Inconclusive):
        _measure()
    assert runs.calls == contracts.NOISE_ATTEMPTS


@pytest.mark.parametrize("gain,mark,noise,decided", [
    ((12.0, 11.0, 13.0), 10.0, 1.05, True),    # 11 / 1.05 = 10.5 >= 10
    ((12.0, 11.0, 13.0), 10.0, 1.2, False),    # 11 / 1.2 = 9.2: the noise could put it under
    ((3.0, 2.5, 3.5), 10.0, 2.5, True),        # 3.5 x 2.5 = 8.75 < 10: short whatever the noise
    ((3.0, 2.5, 4.5), 10.0, 2.5, False),       # 4.5 x 2.5 = 11.25: could reach the mark
    ((1.5, 0.8, 2.0), 1.0, 1.0, False),        # not clear of 1: never a decided pass
])
def test_beyond_noise(gain, mark, noise, decided):
    assert contracts.beyond_noise(harness.Ratio("original", "submission", *gain), mark, noise) is decided


def test_the_noise_factor_is_the_far_end_of_the_references_interval():
    assert contracts.noise_factor(Run(gate=(0.5, 1.2), gain=(1, 1, 1))) == pytest.approx(2.0)
    assert contracts.noise_factor(Run(gate=(0.9, 1.4), gain=(1, 1, 1))) == pytest.approx(1.4)
    assert contracts.noise_factor(Run(gate=(1.01, 1.02), gain=(1, 1, 1))) == pytest.approx(1.02)
