"""What every lab's performance checks share: a timing preset for grading and a noise gate.

Grading never compares against an absolute time or a number from another machine. A speed check
times the original (starter) code, the reference answer *twice*, and the submission, interleaved in
one run; the two reference runs must agree (else the machine is too noisy to judge, and the check
is inconclusive rather than failed); the submission must keep a stated share of the reference's
speed-up over the original.

A run that fails the gate is not thrown away when the verdict stands anyway: ``measure_gated(decided=)``
scales the submission's confidence interval by how far the reference strayed from itself in that run,
and a verdict that no distortion of that size could flip (3x faster where 1.5x is needed, with the
reference 1.4x off itself) is final. Only a verdict within reach of the noise is measured again, and
after ``NOISE_ATTEMPTS`` runs it is inconclusive.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

from perflab import harness
from perflab.grading.grader import CheckResult, Inconclusive

# More rounds than the `fast` preset (a tighter CI for the noise gate), each sample ~10 ms, capped
# at ~5 s per check so that grading a lab stays well under a minute.
GRADING_PRESET = harness.Preset("grading", min_rounds=12, max_rounds=30, target_sample_seconds=0.01,
                                budget_seconds=5.0, description="lab speed checks: ~2-5 s")
# The reference against itself must agree within this factor (both CI ends), else: inconclusive.
NOISE_LIMIT = 1.25
# The gate judges the machine, not the answer: a busy moment (another process on a 2-core laptop)
# makes the reference disagree with itself, so measure again up to this many times.
NOISE_ATTEMPTS = 3
# A submission must keep at least this share of the reference's speed-up over the original.
SPEEDUP_SHARE = 0.5


class WrongAnswer(Exception):
    """The submission's answer differs from the original's: its speed is not judged."""


def _quiet(noise: harness.Ratio) -> bool:
    """The gate: the reference against itself within ``NOISE_LIMIT`` at both ends of its CI."""
    return 1 / NOISE_LIMIT <= noise.ci_low and noise.ci_high <= NOISE_LIMIT


def noise_factor(result: harness.Comparison) -> float:
    """How far the reference strayed from itself in ``result`` (>= 1): the far end of its CI against itself."""
    noise = result.ratio("reference", "reference again")
    return max(1.0, noise.ci_high, 1 / noise.ci_low if noise.ci_low > 0 else math.inf)


def beyond_noise(ratio: harness.Ratio, mark: float, noise: float) -> bool:
    """True when ``ratio``'s 95% CI stays on one side of ``mark`` even with every timing off by ``noise``: above
    it (and clear of 1) or below it, whatever the noise did."""
    return (ratio.clear and ratio.ci_low / noise >= mark) or ratio.ci_high * noise < mark


def measure_gated(original: Callable, reference: Callable, submission: Callable, *,
                  equal: Callable | None = None, preset=GRADING_PRESET,
                  decided: Callable[[harness.Comparison, float], bool] | None = None) -> harness.Comparison:
    """Time original, reference (twice) and submission interleaved; retry while the machine is noisy.

    ``decided(result, noise)``: whether the check's verdict on ``result`` stands with every timing off by the
    factor ``noise`` (`noise_factor`); a noisy run for which it says True is returned rather than measured
    again (`speedup_decided` is the one for `speedup_verdict`)."""
    variants: Mapping[str, Callable] = {
        "original": original, "reference": reference, "reference again": reference, "submission": submission,
    }
    for _ in range(NOISE_ATTEMPTS):
        try:
            result = harness.compare(variants, preset=preset, equal=equal)
        except harness.AnswerMismatch as mismatch:
            raise WrongAnswer(str(mismatch)) from mismatch
        noise = result.ratio("reference", "reference again")
        if _quiet(noise):
            return result
        if decided is not None and decided(result, noise_factor(result)):
            return result
    raise Inconclusive(f"this machine was too noisy to judge speed (the reference against itself: "
                       f"{noise.ci_low:.2f}x–{noise.ci_high:.2f}x); rerun the grader")


def gain_decided(mark: float) -> Callable[[harness.Comparison, float], bool]:
    """`measure_gated`'s ``decided`` for a check that wants the submission ``mark`` times faster than the original."""
    def decided(result: harness.Comparison, noise: float) -> bool:
        return beyond_noise(result.ratio("original", "submission"), mark, noise)
    return decided


def speedup_decided(share: float = SPEEDUP_SHARE) -> Callable[[harness.Comparison, float], bool]:
    """`measure_gated`'s ``decided`` for `speedup_verdict` with the same ``share``."""
    def decided(result: harness.Comparison, noise: float) -> bool:
        return gain_decided(share * result.ratio("original", "reference").value)(result, noise)
    return decided


def noise_note(result: harness.Comparison) -> str:
    """A sentence for a verdict given on a run that failed the noise gate (``""`` when it passed)."""
    noise = result.ratio("reference", "reference again")
    if _quiet(noise):
        return ""
    return (f" (a busy machine: the reference against itself measured {noise.ci_low:.2f}x–{noise.ci_high:.2f}x, "
            "too little to change this verdict)")


def speedup_verdict(result: harness.Comparison, what: str, hint: str, share: float = SPEEDUP_SHARE) -> CheckResult:
    """Pass when the submission keeps ``share`` of the reference's speed-up over the original."""
    reference_gain = result.ratio("original", "reference")
    submission_gain = result.ratio("original", "submission")
    needed = share * reference_gain.value
    details = {"reference": str(reference_gain), "submission": str(submission_gain)}
    if submission_gain.clear and submission_gain.value >= needed:
        return CheckResult.ok(f"{submission_gain.value:.1f}x faster than the original "
                              f"(the reference answer: {reference_gain.value:.1f}x){noise_note(result)}", **details)
    if submission_gain.clear and submission_gain.ci_high >= needed:
        # Short of the mark, but the mark is inside the 95% CI: this run cannot tell (a busy machine); a
        # noisy run is never a fail.
        raise Inconclusive(f"{what} against the original: {submission_gain}; at least {needed:.1f}x is expected "
                           f"(half the reference answer's {reference_gain.value:.1f}x), inside this run's "
                           f"confidence interval: too close to call here; rerun the grader")
    return CheckResult.fail(
        f"{what} against the original: {submission_gain}, but the reference answer is "
        f"{reference_gain.value:.1f}x faster here; at least {needed:.1f}x is expected{noise_note(result)}. {hint}",
        **details)
