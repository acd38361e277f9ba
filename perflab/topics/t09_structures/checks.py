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

import random

from perflab import complexity, harness
from perflab.grading.grader import Check, CheckResult, Exercise, Inconclusive, LabSpec, call_submitted
from perflab.grading.contracts import WrongAnswer, measure_gated
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


# ------------------------------------------------------------------------------------------------
# The originals (what the learner starts from) and the reference answers
# ------------------------------------------------------------------------------------------------

def original_vip_orders(orders, vip_ids):
    return [order for order in orders if order[1] in vip_ids]


def reference_vip_orders(orders, vip_ids):
    vip = set(vip_ids)
    return [order for order in orders if order[1] in vip]


def original_dedupe_events(events):
    unique = []
    for event in events:
        if event not in unique:
            unique.append(event)
    return unique


def reference_dedupe_events(events):
    return list(dict.fromkeys(events))


def vip_inputs(n: int, wrap=int):
    """n orders (id, customer_id, total) over n/2 customers, n/4 of them VIPs (a few listed twice)."""
    rng = random.Random(9000 + n)
    customers = max(2, n // 2)
    orders = [(i, wrap(rng.randrange(1, customers + 1)), round(rng.uniform(5, 500), 2)) for i in range(1, n + 1)]
    vips = rng.sample(range(1, customers + 1), max(1, customers // 2))
    vip_ids = [wrap(c) for c in vips + vips[: len(vips) // 20]]
    return orders, vip_ids


def event_inputs(n: int, wrap=int):
    """n events (user_id, action), about half of them repeats of an earlier one."""
    rng = random.Random(9100 + n)
    users = max(1, n // 4)
    return ([(wrap(rng.randrange(users)), rng.choice(("login", "view"))) for _ in range(n)],)


EDGE_CASES = {
    "vip_orders": [([], []), ([(1, 7, 9.5)], []), ([], [7]), ([(1, 7, 9.5), (2, 8, 1.0), (3, 7, 2.0)], [7, 7]),
                   ([(1, 3, 1.0), (2, 4, 2.0)], [4, 3, 99])],
    "dedupe_events": [([],), ([(1, "login")],), ([(1, "login"), (1, "login"), (2, "view"), (1, "login")],),
                      ([(2, "view"), (1, "view"), (2, "view"), (1, "login")],)],
}

EXERCISES = {
    "vip_orders": dict(original=original_vip_orders, reference=reference_vip_orders, inputs=vip_inputs,
                       speed_n=TIME_SIZES[-1],
                       hint="build a set of the VIP ids once, before the loop, and test membership in it"),
    "dedupe_events": dict(original=original_dedupe_events, reference=reference_dedupe_events, inputs=event_inputs,
                          speed_n=TIME_SIZES[-1],
                          hint="remember what you have seen in a set (or use dict.fromkeys, which keeps order)"),
}


def _call(fn, *args, timeout=30.0):
    return call_submitted(fn, *args, timeout=timeout)


def _describe_sizes(sizes) -> str:
    def short(n):
        return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"
    return f"n={short(sizes[0])}..{short(sizes[-1])}"


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------

def same_results(name: str):
    spec = EXERCISES[name]

    def check(ctx) -> CheckResult:
        fn = ctx.function(name)
        cases = [spec["inputs"](n) for n in (10, 200, 3_000)] + EDGE_CASES[name]
        for args in cases:
            expected = spec["original"](*args)
            got = _call(fn, *args)
            if got != expected:
                size = len(args[0])
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
    key = ("counts", name)
    if key not in ctx.scratch:
        spec = EXERCISES[name]
        fn = ctx.function(name)
        counts = []
        for n in COUNT_SIZES:
            args = spec["inputs"](n, wrap=complexity.Counted)
            with complexity.counting() as counted:
                _call(fn, *args, timeout=60)
            counts.append(counted.operations)
        ctx.scratch[key] = counts
    return ctx.scratch[key]


def operations_linear(name: str):
    spec = EXERCISES[name]

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
            f"loop scans a whole list. Hint: {spec['hint']}", slope=slope, counts=counts)
    return check


def time_linear(name: str):
    spec = EXERCISES[name]

    def check(ctx) -> CheckResult:
        fn = ctx.function(name)
        _call(fn, *spec["inputs"](TIME_SIZES[0]))      # a crash or hang is reported here, not in the sweep
        # Judged on the best of up to SWEEP_ATTEMPTS sweeps whose linear reference measured linear (the
        # noise gate): a busy machine can bend a linear curve upwards, never a quadratic one down to 1.
        # A clear verdict (linear, cut off by max_ms, or a slope far above the limit) ends it early.
        best = None
        with frozen_heap():
            for _ in range(SWEEP_ATTEMPTS):
                try:
                    attempt = harness.sweep({"reference": spec["reference"], "submission": fn},
                                            sizes=TIME_SIZES, setup=spec["inputs"], preset="fast",
                                            max_ms=SWEEP_MAX_MS)
                except harness.AnswerMismatch:
                    return CheckResult.fail(f"{name} returns different results from the reference, so its "
                                            "growth is not judged (see the correctness check)")
                if attempt.slopes["reference"] > MAX_SLOPE:
                    noisy = attempt.slopes["reference"]
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
                f"{complexity.describe_slope(slope)}. Hint: {spec['hint']}", slope=slope)
        if slope <= MAX_SLOPE:
            return CheckResult.ok(f"time grows with slope {slope:.2f} over {sizes} (the reference: "
                                  f"{reference_slope:.2f}): {complexity.describe_slope(slope)}", slope=slope)
        return CheckResult.fail(f"time grows with slope {slope:.2f} over {sizes} (the reference: "
                                f"{reference_slope:.2f}): still {complexity.describe_slope(slope)}; at most "
                                f"{MAX_SLOPE} is linear. Hint: {spec['hint']}", slope=slope)
    return check


def faster_than_original(name: str):
    spec = EXERCISES[name]

    def check(ctx) -> CheckResult:
        fn = ctx.function(name)
        n = spec["speed_n"]
        args = spec["inputs"](n)
        _call(fn, *args)
        with frozen_heap():
            try:
                result = measure_gated(lambda: spec["original"](*args), lambda: spec["reference"](*args),
                                       lambda: fn(*args))
            except WrongAnswer:
                return CheckResult.fail(f"{name} returns different results from the original at n={n:,}, so "
                                        "its speed is not judged (see the correctness check)")
        gain = result.ratio("original", "submission")
        reference_gain = result.ratio("original", "reference")
        details = {"submission": str(gain), "reference": str(reference_gain)}
        if gain.clear and gain.value >= MIN_SPEEDUP:
            return CheckResult.ok(f"at n={n:,}: {gain.value:,.0f}x faster than the original (the reference: "
                                  f"{reference_gain.value:,.0f}x)", **details)
        return CheckResult.fail(f"at n={n:,}, your {name} against the original: {gain}; at least {MIN_SPEEDUP:g}x "
                                f"is expected (the reference: {reference_gain.value:,.0f}x). Hint: {spec['hint']}",
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
    cell_timeout=120,
    total_timeout=600,
    exercises=[
        Exercise("vip", "VIP orders without a list lookup per order", None, ["vip_orders"], _checks("vip_orders")),
        Exercise("dedupe", "Deduplicate events, keeping the first of each, in order", None, ["dedupe_events"],
                 _checks("dedupe_events")),
    ],
)
