"""What lab 06's notebook, its checks and its drivers share: the concurrency limit, and the notebook's
experiment sizes and measuring preset (kept here so that the lesson's cells hold the lesson).

``NAMESPACE`` is what a recorded ``fetch_all`` may use without importing it (the grader re-creates the
learner's function from its source in a sandbox whose scope is pre-filled with this dict).
"""
from __future__ import annotations

import asyncio

LIMIT = 10

# How long the service takes per request, and how big the experiments are. `tiny` keeps the whole
# notebook well under a minute (it runs in the test suite), with a short latency; `small` and `full`
# use the lab's 50 ms and 200 calls, and the article's own 200 ms for its 10-call example. (The
# scale of the course data matters only for the database section; nothing here needs `full`'s size.)
TINY = dict(latency_ms=15, claim_latency_ms=20, sizes=[1, 3, 10, 30, 100], limit_n=100,
            limits=[10, 20, 50, 100], cap_n=250, db_n=50, cpu_ms=5)
LARGER = dict(latency_ms=50, claim_latency_ms=200, sizes=[1, 3, 10, 30, 100, 300], limit_n=200,
              limits=[5, 10, 20, 50, 100, 200], cap_n=300, db_n=200, cpu_ms=25)


def settings(scale: str) -> dict:
    """The notebook's experiment sizes for a course scale (a copy: the notebook may change it)."""
    return dict(TINY if scale == "tiny" else LARGER)


def preset(min_rounds: int | None = None):
    """The preset the notebook measures with.

    Each sample here is one whole fan-out (tens or hundreds of ms): under the `fast` preset the rounds
    are capped at the minimum, 6, so that the sweeps fit the test budget; other presets are used as
    is. ``min_rounds``: at least that many rounds (ratios near 1 need more samples than big ones).
    """
    from perflab import harness  # the grader's sandbox imports NAMESPACE only: keep this module light

    chosen = harness.resolve_preset()
    if chosen.name == "fast":
        chosen = harness.Preset("fast, 6 rounds", min_rounds=6, max_rounds=6,
                                target_sample_seconds=0.002, budget_seconds=1.5)
    if min_rounds is None or chosen.min_rounds >= min_rounds:
        return chosen
    return harness.Preset(f"{chosen.name.split(',')[0]}, {min_rounds} rounds", min_rounds=min_rounds,
                          max_rounds=min_rounds, target_sample_seconds=chosen.target_sample_seconds,
                          budget_seconds=chosen.budget_seconds)


NAMESPACE = {"LIMIT": LIMIT, "asyncio": asyncio}
