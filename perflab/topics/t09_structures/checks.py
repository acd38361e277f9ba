"""Lab 09 · Data structures — the grader's checks.

Two functions that are quadratic in disguise (a lookup in a list inside a loop). For each:

* correctness: the same result as the original on fixed inputs, edge cases included;
* operations grow linearly: the ids are wrapped in ``complexity.Counted`` and every comparison and
  hash is counted at n = 250..2,000; the fitted log-log slope must be <= 1.2 (the original's is ~2).
  Deterministic: the same code gives the same counts on any machine;
* time grows linearly: a timing sweep of the submission next to the reference at n = 1k..8k; the
  submission's slope must be <= 1.2. Gated: if the reference's own slope is above that (a noisy
  machine), the check is inconclusive, not failed;
* faster than the original at the largest size, measured in the same run (``measure_gated``): at
  least ``MIN_SPEEDUP`` times.
"""
from __future__ import annotations

import secrets

from perflab import complexity, harness
from perflab.grading.grader import Check, CheckResult, Exercise, Inconclusive, LabSpec
from perflab.topics.t09_structures.drivers import EDGE_CASES
from perflab.grading.contracts import WrongAnswer, gain_decided, measure_gated, noise_note
from perflab.memory import frozen_heap

MAX_SLOPE = 1.2
COUNT_SIZES = (250, 500, 1_000, 2_000)
TIME_SIZES = (1_000, 2_000, 4_000, 8_000)
MIN_SPEEDUP = 10.0
# A submission whose call takes longer than this in the timing sweep is not run at larger sizes.
SWEEP_MAX_MS = 150
SWEEP_ATTEMPTS = 3
# A timing slope this far above MAX_SLOPE is not noise: no need to measure again.
CLEARLY_WORSE = 1.6
# The noise gate: the linear reference, timed in the same sweep, must measure a slope in this band.
REFERENCE_BAND = (0.7, MAX_SLOPE)
# A submission within this of the reference's slope (same sweep) grows like it; this far above, it does not.
TRACKS_REFERENCE = 0.15
CLEARLY_APART = 0.6
TIME_REPEAT = 10


DRIVERS = "perflab.topics.t09_structures.drivers"
HINTS = {
    "vip_orders": "build a set of the VIP ids once, before the loop, and test membership in it",
    "dedupe_events": "remember what you have seen in a set (or use dict.fromkeys, which keeps order)",
}
SPEED_N = TIME_SIZES[-1]
CORRECTNESS_SIZES = (10, 200, 3_000)


def _seed(ctx) -> int:
    """A seed drawn once per grading run: inputs no submission can know in advance."""
    return ctx.scratch.setdefault("seed", 1 + secrets.randbelow(10**6))


def _sides(ctx, name: str, driver: str, timeout: float = 30.0) -> dict:
    """The original, the reference and the submission, each called in its sandbox through ``driver``."""
    where = f"{DRIVERS}:{driver}"
    return {"original": ctx.original_function(name, driver=where, timeout=120),
            "reference": ctx.reference_function(name, driver=where, timeout=timeout),
            "submission": ctx.function(name, driver=where, timeout=timeout)}


def _describe_sizes(sizes) -> str:
    def short(n):
        return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"
    return f"n={short(sizes[0])}..{short(sizes[-1])}"


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------

def same_results(name: str):
    def check(ctx) -> CheckResult:
        generated = _sides(ctx, name, "result")
        edges = _sides(ctx, name, "edge_case")
        cases = [(generated, (name, n, _seed(ctx)), n) for n in CORRECTNESS_SIZES]
        cases += [(edges, (name, i), len(case[0])) for i, case in enumerate(EDGE_CASES[name])]
        for sides, args, size in cases:
            expected = sides["original"](*args)
            got = sides["submission"](*args)
            if got != expected:
                if isinstance(got, list) and sorted(map(repr, got)) == sorted(map(repr, expected)):
                    why = "the right items in a different order: keep the original order"
                elif isinstance(got, list):
                    why = f"{len(got)} items where the original returns {len(expected)}"
                else:
                    why = f"a {type(got).__name__}, not a list like the original"
                return CheckResult.fail(f"{name} returns {why} (an input of {size} items)")
        return CheckResult.ok(f"{name} returns the same as the original on {len(cases)} inputs, edge cases included")
    return check


def _counts(ctx, name):
    """Operations counted in the sandbox (a number it reports: the timing checks, measured from outside,
    are what a faked count cannot pass, and every check is needed to pass the lab)."""
    key = ("counts", name)
    if key not in ctx.scratch:
        count = ctx.function(name, driver=f"{DRIVERS}:operations", timeout=60)
        ctx.scratch[key] = [int(count(name, n, _seed(ctx))) for n in COUNT_SIZES]
    return ctx.scratch[key]


def operations_linear(name: str):
    def check(ctx) -> CheckResult:
        counts = _counts(ctx, name)
        slope = complexity.fitted_slope(COUNT_SIZES, counts)
        sizes = _describe_sizes(COUNT_SIZES)
        table = ", ".join(f"{n:,}: {ops:,}" for n, ops in zip(COUNT_SIZES, counts))
        if slope <= MAX_SLOPE:
            return CheckResult.ok(f"comparisons and hashes grow with slope {slope:.2f} over {sizes} ({table}): "
                                  f"{complexity.describe_slope(slope)}", slope=slope, counts=counts)
        return CheckResult.fail(
            f"comparisons and hashes grow with slope {slope:.2f} over {sizes} ({table}): still "
            f"{complexity.describe_slope(slope)}; at most {MAX_SLOPE} is linear. Usually something inside the "
            f"loop scans a whole list. Hint: {HINTS[name]}", slope=slope, counts=counts)
    return check


def time_linear(name: str):
    def check(ctx) -> CheckResult:
        sides = _sides(ctx, name, "timed")
        seed = _seed(ctx)
        sides["submission"](name, TIME_SIZES[0], seed)      # a crash or hang is reported here, not in the sweep
        # Each timed call runs the function TIME_REPEAT times (fresh copies of the inputs), so the round trip
        # to the sandbox (~0.2 ms, constant) does not flatten the curve of a fast function.
        variants = {side: (lambda n, fn=sides[side]: fn(name, n, seed, TIME_REPEAT)) for side in ("reference", "submission")}
        # Judged on the best of up to SWEEP_ATTEMPTS sweeps whose linear reference measured linear (the
        # noise gate): a busy machine can bend a linear curve upwards, never a quadratic one down to 1.
        # A clear verdict (linear, cut off by max_ms, or a slope far above the limit) ends it early.
        best = None
        with frozen_heap():
            for _ in range(SWEEP_ATTEMPTS):
                try:
                    attempt = harness.sweep(variants, sizes=TIME_SIZES, setup=lambda n: (n,), preset="fast",
                                            max_ms=SWEEP_MAX_MS)
                except harness.AnswerMismatch:
                    return CheckResult.fail(f"{name} returns different results from the reference, so its "
                                            "growth is not judged (see the correctness check)")
                if not REFERENCE_BAND[0] <= attempt.slopes["reference"] <= REFERENCE_BAND[1]:
                    noisy = attempt.slopes["reference"]  # the linear reference did not measure linear: noise
                    continue
                if best is None or attempt.slopes["submission"] < best.slopes["submission"]:
                    best = attempt
                submitted = attempt.slopes["submission"]
                if submitted <= MAX_SLOPE or "submission" in attempt.skipped or submitted >= CLEARLY_WORSE:
                    break
        if best is None:
            raise Inconclusive(f"this machine was too noisy to time the growth: the linear reference itself "
                               f"measured slope {noisy:.2f}; rerun the grader")
        measured, reference_slope = best, best.slopes["reference"]
        slope = measured.slopes["submission"]
        sizes = _describe_sizes(list(measured.summary.query("variant == 'submission'").n))
        if "submission" in measured.skipped:
            return CheckResult.fail(
                f"time grows with slope {slope:.2f} over {sizes}, and one call took over {SWEEP_MAX_MS} ms by "
                f"n={measured.skipped['submission']:,} (the reference: slope {reference_slope:.2f}): still "
                f"{complexity.describe_slope(slope)}. Hint: {HINTS[name]}", slope=slope)
        if slope <= MAX_SLOPE or slope <= reference_slope + TRACKS_REFERENCE:
            return CheckResult.ok(f"time grows with slope {slope:.2f} over {sizes} (the reference: "
                                  f"{reference_slope:.2f}): {complexity.describe_slope(min(slope, MAX_SLOPE))}",
                                  slope=slope)
        if slope < CLEARLY_WORSE and slope - reference_slope < CLEARLY_APART:
            raise Inconclusive(f"time grew with slope {slope:.2f} against the reference's {reference_slope:.2f} in "
                               "the same sweep: too close to tell on a machine this busy; rerun the grader")
        return CheckResult.fail(f"time grows with slope {slope:.2f} over {sizes} (the reference: "
                                f"{reference_slope:.2f}): still {complexity.describe_slope(slope)}; at most "
                                f"{MAX_SLOPE} is linear. Hint: {HINTS[name]}", slope=slope)
    return check


def faster_than_original(name: str):
    def check(ctx) -> CheckResult:
        sides = _sides(ctx, name, "timed")
        n, seed = SPEED_N, _seed(ctx)
        sides["submission"](name, n, seed)
        with frozen_heap():
            try:
                result = measure_gated(*(lambda fn=sides[side]: fn(name, n, seed)
                                         for side in ("original", "reference", "submission")),
                                       decided=gain_decided(MIN_SPEEDUP))
            except WrongAnswer:
                return CheckResult.fail(f"{name} returns different results from the original at n={n:,}, so "
                                        "its speed is not judged (see the correctness check)")
        gain = result.ratio("original", "submission")
        reference_gain = result.ratio("original", "reference")
        details = {"submission": str(gain), "reference": str(reference_gain)}
        if gain.clear and gain.value >= MIN_SPEEDUP:
            return CheckResult.ok(f"at n={n:,}: {gain.value:,.0f}x faster than the original (the reference: "
                                  f"{reference_gain.value:,.0f}x){noise_note(result)}", **details)
        return CheckResult.fail(f"at n={n:,}, your {name} against the original: {gain}; at least {MIN_SPEEDUP:g}x "
                                f"is expected (the reference: {reference_gain.value:,.0f}x){noise_note(result)}. "
                                f"Hint: {HINTS[name]}",
                                **details)
    return check


def _checks(name: str) -> list[Check]:
    return [
        Check("same results as the original", same_results(name), 2),
        Check("comparisons and hashes grow linearly (slope <= 1.2)", operations_linear(name), 1),
        Check("time grows linearly (slope <= 1.2)", time_linear(name), 1),
        Check(f"at least {MIN_SPEEDUP:g}x faster than the original at the largest size", faster_than_original(name), 1),
    ]


LAB = LabSpec(
    id="09",
    title="Data structures: make it linear",
    solution="09_data_structures.ipynb",
    needs_database=False,
    namespace=None,
    cell_timeout=120,
    total_timeout=600,
    exercises=[
        Exercise("vip", "VIP orders without a list lookup per order", None, ["vip_orders"], _checks("vip_orders")),
        Exercise("dedupe", "Deduplicate events, keeping the first of each, in order", None, ["dedupe_events"],
                 _checks("dedupe_events")),
    ],
)
