"""The claims ledger: every numeric or testable claim of the article the course covers, and how it is judged.

The article (``/work/shared/seed``, "performance optimization" with its interview questions) makes claims
of three sorts, and each is one :class:`Claim` below:

- a claim a notebook prints with ``lesson.claim(name, article=..., measured=..., verdict=...)``:
  ``names`` lists the names (``fnmatch`` patterns) under which notebooks print it; a test fails when a
  notebook prints a claim no entry names (``tests/test_claims.py``);
- a claim a recorded result answers without a printed claim: ``result`` names the recorded result
  (``fnmatch`` pattern on the name given to ``lesson.record``) and ``judge`` reads the number and the
  verdict from it;
- a claim no notebook can measure on one machine (business figures, other companies' fleets):
  ``not_measurable`` says why.

The JavaScript-bundle section (1 MB of JS taking 4-5 s on a 3G phone, lodash's 72 kB vs 300 B) is out of
scope: the course is about the backend, and nothing here runs a browser on a phone.

The verdict rule (one rule for every entry: the printed-claim path, ``judge_ratio`` and every judge).
A verdict is one of :data:`VERDICTS` and always comes with a *why*:

- **not measurable here** when the measurement cannot tell: the 95% CI of the ratio includes 1x (no
  clear difference), or the effect needs a larger table than the run's scale (``min_scale``: a result
  at a smaller scale that does not hold is reported with ``scale_note``, e.g. "at tiny the table fits
  in a few pages; the difference needs small or full"), or the claim cannot be measured on one machine
  (``not_measurable``);
- **contradicted** only when the measurement clearly goes the other way: the whole CI is below 1x
  (the "good" version was slower), or a forced experiment shows the opposite of the claim;
- **holds** when the difference is clear (the CI's low end is above 1x) and the measured value reaches
  the claimed factor ``t`` (a claim of "faster", no factor, has ``t = 1``), or lies in the dead-band
  ``[t/2, t)`` with the CI reaching ``t``;
- **holds, weaker** when the difference is clear but the value is below ``t/2``, or in the dead-band
  with the whole CI below ``t``.

So the verdict depends on the measured value against the threshold, not on how wide one run's CI
happened to be: a clear value 2x or more above ``t`` always holds, a value 2x or more below ``t``
never holds; only a value within a factor of two of ``t`` (the dead-band) may read differently from
one run to the next. Judges without a CI (slopes, counts, p99s) follow the same shape with their own
threshold, written next to them.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from perflab.units import format_factor, format_number

__all__ = ["Claim", "LEDGER", "VERDICTS", "OUT_OF_SCOPE", "find", "classify", "judge_ratio", "at_scale",
           "ledger_rows"]

HOLDS, WEAKER, CONTRADICTED, NOT_MEASURABLE, NOT_RUN = (
    "holds", "holds, weaker", "contradicted", "not measurable here", "not measured in this run")
VERDICTS = (HOLDS, WEAKER, CONTRADICTED, NOT_MEASURABLE, NOT_RUN)

OUT_OF_SCOPE = ("The article's JavaScript-bundle section (1 MB of JavaScript taking 4-5 s to process on a "
                "mid-range phone on 3G; lodash 72 kB gzipped vs lodash-es debounce ~300 B) is out of scope: "
                "the course covers the backend only.")


@dataclass(frozen=True)
class Claim:
    id: str
    topic: str | None            # the notebook that measures it ("01_let_the_index_work"), None if none does
    ours: str                    # the claim in our words
    article: str                 # the article's figure, as it gives it
    judged: str                  # how this machine's measurement is judged
    names: tuple[str, ...] = ()  # lesson.claim names that print it (fnmatch patterns)
    result: str | None = None    # a recorded result that measures it (fnmatch pattern on its name)
    threshold: float | None = None
    judge: Callable[[dict], tuple[str, str, str]] | None = field(default=None, compare=False, repr=False)
    not_measurable: str | None = None
    min_scale: str | None = None  # the smallest scale at which the effect can show ("small")
    scale_note: str | None = None  # why a smaller scale cannot show it


# ---------------------------------------------------------------------------------------------
# Judges: read a recorded result (the protocol dict report.record wrote) -> (measured, verdict, why)


def _ratio_of(entry: dict) -> dict | None:
    result = entry.get("result") or {}
    if isinstance(result.get("ratio"), dict):
        return result["ratio"]
    comparisons = result.get("comparisons")
    if isinstance(comparisons, dict) and comparisons:
        last = comparisons[max(comparisons, key=lambda n: int(n))]
        return last.get("ratio")
    return None


def judge_ratio(value: float | None, low: float | None, high: float | None, threshold: float) -> tuple[str, str]:
    """(verdict, why) of a measured ratio ``value`` (good vs bad, > 1: the good version is faster) with its
    95% CI ``[low, high]`` against a claimed factor ``threshold``: the rule of the module docstring."""
    if value is None or low is None or high is None:
        return NOT_RUN, "no ratio was measured"
    t = max(float(threshold), 1.0)
    if low <= 1 <= high:
        return NOT_MEASURABLE, (f"no clear difference: the 95% CI ({format_factor(low)}x–{format_factor(high)}x) "
                                "includes 1x")
    if high < 1:
        return CONTRADICTED, (f"the 'good' version was clearly slower: {format_factor(1 / value)}x slower, "
                              f"the whole 95% CI below 1x")
    if value >= t:
        return HOLDS, (f"a clear gain of {format_factor(value)}x, at least the claimed {t:g}x" if t > 1
                       else f"a clear gain ({format_factor(value)}x, the 95% CI above 1x)")
    if value >= t / 2:
        if high >= t:
            return HOLDS, f"{format_factor(value)}x, within 2x of the claimed {t:g}x and the CI reaches it"
        return WEAKER, f"a clear gain of {format_factor(value)}x, within 2x of the claimed {t:g}x but the CI stays below it"
    return WEAKER, f"a clear gain of {format_factor(value)}x, more than 2x smaller than the claimed {t:g}x"


def _scale_rank(scale: str | None) -> int:
    order = ("tiny", "small", "full")
    return order.index(scale) if scale in order else len(order)


def at_scale(claim: "Claim", verdict: str, why: str, scale: str | None) -> tuple[str, str]:
    """A verdict other than "holds" measured below the claim's ``min_scale`` is "not measurable here"."""
    if (claim.min_scale and verdict in (CONTRADICTED, NOT_MEASURABLE)
            and _scale_rank(scale) < _scale_rank(claim.min_scale)):
        note = claim.scale_note or f"the effect needs the {claim.min_scale} scale or larger"
        return NOT_MEASURABLE, f"{note} (measured at {scale}: {why})"
    return verdict, why


def _oriented(ratio: dict | None, fast: str | None) -> dict | None:
    """``ratio`` read as "the variant containing ``fast`` against the other": inverted (value, CI) when the
    notebook measured it the other way round (its baseline is the good version)."""
    if not ratio or not fast or ratio.get("value") in (None, 0):
        return ratio
    if fast in str(ratio.get("slow") or "") and fast not in str(ratio.get("fast") or ""):
        low, high = ratio.get("ci_low"), ratio.get("ci_high")
        return ratio | {"slow": ratio.get("fast"), "fast": ratio.get("slow"), "value": 1 / ratio["value"],
                        "ci_low": 1 / high if high else None, "ci_high": 1 / low if low else None,
                        "headline": f"{ratio.get('slow')} vs {ratio.get('fast')}: "
                                    f"{format_factor(1 / ratio['value'])}x (inverted from the notebook's order)"}
    return ratio


def _by_ratio(threshold: float, fast: str | None = None) -> Callable[[dict], tuple[str, str, str]]:
    """Judge the default ratio (or the one whose fast variant contains ``fast``) against ``threshold``:
    :func:`judge_ratio`. ``fast`` names the version the claim says is faster, whichever order the notebook
    passed the variants in."""
    def judge(entry: dict) -> tuple[str, str, str]:
        ratio = _oriented(_ratio_of(entry), fast)
        if fast:
            chosen = next((r for r in (entry.get("result") or {}).get("ratios") or []
                           if fast in str(r.get("variant") or "")), None)
            if chosen:
                ratio = {"value": chosen.get("ratio"), "ci_low": chosen.get("ci_low"), "ci_high": chosen.get("ci_high"),
                         "headline": f"{chosen['variant']} vs {chosen.get('baseline')}: {chosen.get('text')}"}
        if not ratio:
            return entry.get("headline") or "recorded", NOT_RUN, "the result has no ratio"
        verdict, why = judge_ratio(ratio.get("value"), ratio.get("ci_low"), ratio.get("ci_high"), threshold)
        return ratio.get("headline") or entry.get("headline") or "", verdict, why
    return judge


def _slopes(entry: dict) -> dict:
    return {k: v for k, v in ((entry.get("result") or {}).get("slopes") or {}).items() if v is not None}


def _queue_slopes(entry: dict) -> tuple[str, str, str]:
    slopes = _slopes(entry)
    pop0 = next((v for k, v in slopes.items() if "pop(0)" in k), None)
    deque_ = next((v for k, v in slopes.items() if "popleft" in k or "deque" in k), None)
    measured = ", ".join(f"{k}: slope {v:.2f}" for k, v in slopes.items())
    if pop0 is None or deque_ is None:
        return measured or "recorded", NOT_RUN, "both slopes are needed"
    # The claim: one power of n apart (threshold 1). Half a power or more holds; a reversal (pop(0)
    # growing clearly slower) contradicts; in between, the sizes are too small for pop(0)'s memmove to show.
    if pop0 - deque_ >= 0.5:
        return measured, HOLDS, "draining with pop(0) grows about one power of n faster than with popleft()"
    if pop0 - deque_ <= -0.5:
        return measured, CONTRADICTED, "popleft() grew clearly faster than pop(0)"
    return measured, NOT_MEASURABLE, ("the slopes do not differ by half a power of n at these sizes: pop(0)'s "
                                      "memmove is still too cheap to show; larger queues show it")


def _counter(entry: dict, *keys: str):
    counters = entry.get("counters") or {}
    for key in keys:
        if key in counters:
            return counters[key]
    return None


def _backends(entry: dict) -> tuple[str, str, str]:
    rows = ((entry.get("result") or {}).get("table") or {})
    columns, data = rows.get("columns", []), rows.get("rows", [])
    if not data:
        return entry.get("headline") or "recorded", NOT_RUN, "no table of backends"
    records = [dict(zip(columns, r)) for r in data]
    numeric = [c for c in columns if "backend" in c and all(isinstance(r.get(c), (int, float)) for r in records)]
    if not numeric:
        return entry.get("headline") or "", NOT_RUN, "no counts in the table"
    counts = [r[numeric[0]] for r in records]
    measured = entry.get("headline") or ""
    if max(counts) >= 10 * max(min(counts), 1):
        return measured, HOLDS, "a connection per request starts a server backend per request; the pool a handful"
    if max(counts) > min(counts):
        return measured, WEAKER, "the difference in backends started is under 10x"
    return measured, CONTRADICTED, "both ways started as many backends"


def _pool_knee(entry: dict) -> tuple[str, str, str]:
    knee, rule, cores = (_counter(entry, "knee"), _counter(entry, "rule_of_thumb"), _counter(entry, "cores"))
    if knee is None or rule is None:
        return entry.get("headline") or "recorded", NOT_RUN, "no knee or rule recorded"
    measured = f"throughput stops growing at pool size {format_number(knee)}; (cores x 2) + 1 = {format_number(rule)} ({cores} cores)"
    if rule / 2 <= knee <= rule * 2:
        return measured, HOLDS, "the knee is within a factor of two of the rule"
    return measured, WEAKER, "the knee is more than a factor of two from the rule (the client shares the cores)"


def _herd_or_race(entry: dict) -> tuple[str, str, str]:
    headline = entry.get("headline") or ""
    if "naive cache-aside=True" in headline and "lease=False" in headline:
        return headline, CONTRADICTED, ("delete-on-write alone still let the stale value in when forced; "
                                        "a lease (or version check) prevented it")
    if "naive cache-aside=False" in headline:
        return headline, HOLDS, "the forced race did not leave a stale value"
    return headline, NOT_RUN, "the race was not forced"


def _lost_tasks(entry: dict) -> tuple[str, str, str]:
    counters = entry.get("counters") or {}
    early = next((v for k, v in counters.items() if "early" in k), None)
    late = next((v for k, v in counters.items() if "late" in k), None)
    measured = entry.get("headline") or ", ".join(f"{k} {v}" for k, v in counters.items())
    if early is None or late is None:
        return measured, NOT_RUN, "both acknowledgement modes are needed"
    if late == 0 and early > 0:
        return measured, HOLDS, ("with late acks the killed task is delivered again (so it must be idempotent); "
                                 "with early acks it is lost")
    return measured, WEAKER, "the kill did not separate the two acknowledgement modes"


def _big_tenant_p99(entry: dict) -> tuple[str, str, str]:
    """The big tenant's p99 with the first variant vs the last (``counters["per tenant"]``)."""
    rows = [r for r in (entry.get("counters") or {}).get("per tenant") or [] if "big" in str(r.get("label"))]
    if len(rows) < 2 or not all(isinstance(r.get("p99_ms"), (int, float)) for r in rows):
        return entry.get("headline") or "recorded", NOT_RUN, "no per-tenant p99 recorded"
    before, after = rows[0], rows[-1]
    factor = before["p99_ms"] / max(after["p99_ms"], 1e-9)
    measured = (f"big tenant p99: {before['variant']} {format_number(before['p99_ms'])} ms, "
                f"{after['variant']} {format_number(after['p99_ms'])} ms ({format_factor(factor)}x lower)")
    calls = min(int(r.get("calls") or 0) for r in rows)
    note = f"; only {calls} calls of the big tenant, so its p99 is nearly its maximum" if calls < 100 else ""
    # threshold 2x; no CI: within 10% either way is "no clear change", and with fewer than 100 calls a
    # p99 is nearly the maximum, so a rise is not a clear reversal either.
    if factor >= 2:
        return measured, HOLDS, f"the big tenant's p99 fell {format_factor(factor)}x{note}"
    if factor > 1.1:
        return measured, WEAKER, f"the big tenant's p99 fell less than 2x{note}"
    if factor < 1 / 1.1 and calls >= 100:
        return measured, CONTRADICTED, f"the big tenant's p99 rose {format_factor(1 / factor)}x"
    return measured, NOT_MEASURABLE, f"no clear change in the big tenant's p99{note}"


def _total_drop(entry: dict) -> tuple[str, str, str]:
    """Sum of a table's "before" column against its "after" column."""
    table = (entry.get("result") or {}).get("table") or {}
    columns, data = table.get("columns") or [], table.get("rows") or []
    before = next((i for i, c in enumerate(columns) if "before" in c), None)
    after = next((i for i, c in enumerate(columns) if "after" in c), None)
    if before is None or after is None or not data:
        return entry.get("headline") or "recorded", NOT_RUN, "no before/after table"
    total_before = sum(r[before] or 0 for r in data)
    total_after = sum(r[after] or 0 for r in data)
    factor = total_before / max(total_after, 1e-9)
    measured = entry.get("headline") or f"{format_number(total_before)} -> {format_number(total_after)}"
    if factor >= 2:
        return measured, HOLDS, f"fixing what the log ranked first cut the top offenders' time {format_factor(factor)}x"
    if factor > 1.1:
        return measured, WEAKER, f"the top offenders' time fell {format_factor(factor)}x, less than 2x"
    if factor < 1 / 1.1:
        return measured, CONTRADICTED, f"the top offenders' time rose {format_factor(1 / factor)}x"
    return measured, NOT_MEASURABLE, "no clear change in the top offenders' time (within 10%)"


def _list_peak(entry: dict, claimed_bytes: float) -> tuple[str, str, str]:
    """The baseline's (the list's) peak memory against the article's figure, within a factor of two."""
    peaks = ((entry.get("result") or {}).get("details") or (entry.get("result") or {})).get("peaks") or []
    if not peaks or not isinstance(peaks[0].get("peak_bytes"), (int, float)):
        return entry.get("headline") or "recorded", NOT_RUN, "no peak recorded"
    peak = peaks[0]["peak_bytes"]
    measured = entry.get("headline") or f"{peaks[0].get('label')}: peak {format_number(peak)} B"
    if claimed_bytes / 2 <= peak <= claimed_bytes * 2:
        return measured, HOLDS, f"the list peaked within a factor of two of the article's {claimed_bytes / 1e6:g} MB"
    return measured, WEAKER, f"the list's peak is more than a factor of two from {claimed_bytes / 1e6:g} MB"


# ---------------------------------------------------------------------------------------------
# The ledger, in the order of the course

LEDGER: tuple[Claim, ...] = (
    # -- the introduction
    Claim("intro-amazon", None, "every 100 ms of added latency costs 1% of sales (Amazon)",
          "100 ms -> 1% of sales", "not judged",
          not_measurable="a business figure from Amazon's traffic; no notebook can measure sales"),
    Claim("intro-google", None, "half a second more on search results drops traffic by 20% (Google)",
          "+0.5 s -> -20% traffic", "not judged",
          not_measurable="a business figure from Google's traffic; no notebook can measure users leaving"),
    # -- 01 indexes
    Claim("01-function-wrapped", "01_let_the_index_work",
          "a range on an indexed column beats the same filter wrapped in a function (YEAR(), EXTRACT())",
          "can be 1000x faster on large tables", "ratio of medians with its 95% CI against 1000x",
          names=("range vs function-wrapped, one-hour window",), threshold=1000),
    Claim("01-table-growth", "01_let_the_index_work",
          "a query fast on a small table is slow on a big one (the plan scales with the table)",
          "5 ms at 1,000 rows may take 5 s at 10 million rows", "fitted log-log slope of time vs rows (about 1: it holds)",
          names=("a query that is fast on a small table is slow on a big one",)),
    Claim("01-select-star", "01_let_the_index_work", "select only the columns you use; SELECT * costs more",
          "SELECT * wastes bandwidth and memory (no figure)", "ratio of medians: a clear gain holds",
          names=("select only the columns you use",), threshold=1, min_scale="small",
          scale_note="at tiny a customer has a handful of orders and the two extra columns are a few hundred "
                     "bytes; the difference needs small or full"),
    Claim("01-covering-index", "01_let_the_index_work",
          "a covering index answers from the index without touching the table",
          "served entirely from the index", "the plan: Index Only Scan with no heap fetches, and the speed-up",
          result="covering index", judge=_by_ratio(1), min_scale="small",
          scale_note="at tiny the table fits in a few pages, all in shared_buffers, so visiting it costs almost "
                     "nothing; the difference needs small or full"),
    Claim("01-composite-order", "01_let_the_index_work",
          "a composite index (a, b) helps filters on a and on a+b, not on b alone: column order matters",
          "(user_id, status) helps user_id and user_id+status, not status alone",
          "ratio of the query on the range-first index (created_at, status) to the same query on the "
          "equality-first one (status, created_at): > 1 means the right order is faster",
          result="composite index column order", judge=_by_ratio(2, fast="status, created_at"), min_scale="small",
          scale_note="at tiny a month holds a few hundred orders, a handful of index pages either way; "
                     "the difference needs small or full"),
    # -- 02 N+1
    Claim("02-n-plus-one", "02_n_plus_one",
          "lazy loading in a loop issues N+1 queries; eager loading 2, and is far faster over a network",
          "100 orders: 101 queries; 1,000 orders: 1,001 queries at ~5 ms = 5 s vs ~10 ms eager, 500x",
          "statements counted server-side and time at 5 ms RTT, ratio against the article's factor",
          names=("lazy vs eager at 5 ms RTT, N=*",)),
    Claim("02-statements-grow", "02_n_plus_one", "the number of statements grows with N for lazy loading, stays fixed eager",
          "query count proportional to the result size", "statements counted server-side at every N; time sweep slopes",
          result="growth with N", judge=_by_ratio(2)),
    Claim("02-cartesian", "02_n_plus_one",
          "joining two collections eagerly multiplies the rows (Cartesian explosion); selectin loading does not",
          "500 orders x 20 items = 10,000 rows with duplicated order data", "rows transferred vs needed, and the ratio",
          result="cartesian explosion", judge=_by_ratio(1)),
    # -- 03 tail latency
    Claim("03-tail-index", "03_tail_latency",
          "a slow p99 with a fine p50 is a subset of requests on a slow path; an index for that path fixes the tail",
          "p99 2 s with p50 80 ms: 1 in 100 requests 10x slower", "the big tenant's p99 before and after the index (2x: holds)",
          result="largest orders: p50/p99*", judge=_big_tenant_p99),
    Claim("03-partial-index", "03_tail_latency", "a partial index for the big tenant's queries fixes their p99",
          "CREATE INDEX ... WHERE tenant_id = 'large_customer'", "p99 before and after the partial index",
          result="pending orders: partial index", judge=_big_tenant_p99),
    Claim("03-materialized-view", "03_tail_latency", "a materialized view precomputes an expensive aggregation",
          "precompute and refresh on a schedule", "p50/p99 of the live query vs the view",
          result="dashboard: materialized view", judge=_big_tenant_p99),
    Claim("03-partition-pruning", "03_tail_latency", "partition pruning keeps queries off partitions they do not need",
          "queries that do not touch the large partition never look at it", "p50/p99 unpartitioned vs partitioned",
          result="this month's orders: partitioned by month", judge=_big_tenant_p99),
    # -- 04 slow queries
    Claim("04-slow-log", "04_slow_queries", "the slow-query log finds the worst offenders; fixing them cuts total time",
          "slow query logs are the single most valuable tool for database performance",
          "total time of the workload before and after fixing the top three of the log",
          result="slow-query workload*", judge=_total_drop),
    # -- 05 connections
    Claim("05-connect-cost", "05_connection_pooling", "opening a connection costs far more than borrowing one from a pool",
          "20-50 ms vs ~0.1 ms (200-500x)", "ratio of medians at 2 ms RTT against 200x",
          names=("open a connection vs borrow one from a pool (2 ms RTT)",), threshold=200),
    Claim("05-backends", "05_connection_pooling", "a connection per request starts a server process per request (max_connections at risk)",
          "risks exhausting the database's max_connections", "backends started, counted by the server",
          result="backends started for 500 requests", judge=_backends),
    Claim("05-pool-size", "05_connection_pooling", "a pool of about (cores x 2) + 1 connections is enough; more is not better",
          "connections = (cores x 2) + spindles; a 4-core server needs ~9, not 100",
          "the pool size at which throughput stops growing vs the rule", result="pool size sweep", judge=_pool_knee),
    # -- 06 async
    Claim("06-gather", "06_async_gather", "concurrent I/O with asyncio.gather takes the longest call, not the sum",
          "10 URLs at 200 ms: 2 s sequential vs ~200 ms with gather, 10x", "ratio of medians against 10x",
          names=("10 calls: await in a loop vs asyncio.gather",), threshold=10),
    # -- 07 caching
    Claim("07-hit-vs-miss", "07_redis_caching", "a cache hit is ~1 ms from memory; a miss costs the database query",
          "hit ~1 ms, miss 10-100 ms", "hit and miss times measured, ratio",
          names=("miss vs hit",)),
    Claim("07-stale-set", "07_redis_caching", "delete-on-write cache-aside prevents the stale-set race",
          "use cache-aside with delete-on-write (not update-on-write)", "a forced race: is the stale value left in the cache?",
          result="stale-set race", judge=_herd_or_race),
    Claim("07-thundering-herd", "07_redis_caching", "with a lease, concurrent misses make one database query, not one each",
          "one database query instead of 10,000", "database queries counted for 100 concurrent misses",
          names=("thundering herd",)),
    # -- 08 offload
    Claim("08-offload", "08_celery_offload", "an endpoint that queues the slow work answers in the time of the fast part",
          "~2500 ms inline vs ~50 ms offloaded", "p50 under open-loop load, inline vs offloaded",
          names=("endpoint latency inline vs offloaded",)),
    Claim("08-redelivery", "08_celery_offload", "a worker crash delivers a message again: tasks must be idempotent",
          "messages can be delivered more than once if a worker crashes", "tasks lost or duplicated after kill -9",
          result="tasks lost on worker kill", judge=_lost_tasks),
    # -- 09 data structures
    Claim("09-list-vs-set", "09_data_structures", "membership in a set is O(1), in a list O(n)",
          "1M items: 1 s (list) vs 1 µs (set)", "one lookup timed at 1M items; the ratio and both absolute times",
          names=("list vs set membership at 1M items",)),
    Claim("09-deque", "09_data_structures", "deque.popleft() is O(1), list.pop(0) O(n)",
          "list.pop(0) is O(n)!", "fitted log-log slopes of draining a queue",
          result="queue: list.pop(0) vs deque.popleft()", judge=_queue_slopes),
    Claim("09-defaultdict", "09_data_structures", "defaultdict is cleaner and slightly faster than check-then-update",
          "slightly faster due to fewer dictionary lookups", "ratio of medians: a clear gain holds",
          result="counting: check-then-update*", judge=_by_ratio(1, fast="defaultdict")),
    Claim("09-list-memory", "09_data_structures", "a list of a million ints takes tens of MB; a generator almost none",
          "[i for i in range(1000000)] ~38 MB", "peak memory (tracemalloc) of a list vs a generator",
          result="memory: list comprehension vs generator", judge=lambda e: _list_peak(e, 38e6)),
    # -- 10 profiling
    Claim("10-guessing", "10_profiling", "engineers find the bottleneck less than 30% of the time without measuring",
          "less than 30% of the time", "not judged", names=("engineers identify the bottleneck*",),
          not_measurable="a study of engineers; a notebook can only show that the obvious suspect was not the hot spot"),
    Claim("10-profile-first", "10_profiling", "profile first, fix the hot path, verify with a benchmark",
          "fix the actual hot path, verified with benchmarks", "time of each fix in turn, ratio of first to last",
          names=("profile first, optimize second, measure third",)),
    Claim("10-cprofile-overhead", "10_profiling", "cProfile's overhead is 10-20%",
          "overhead is ~10-20%", "not judged",
          not_measurable="the overhead depends on how many calls the code makes; the notebook shows the profiled "
                         "and plain times but no ratio is recorded"),
    # -- 11 scaling out
    Claim("11-replicas", "11_scaling_out", "2-3 read replicas give 3-4x read throughput",
          "3-4x read throughput with 2-3 replicas", "reads per second, one node vs primary + replica",
          names=("read replicas: 2-3 replicas give 3-4x read throughput",),
          not_measurable="a replica on the same machine shares the primary's cores"),
    Claim("11-fix-before-shard", "11_scaling_out", "query fixes and caching give 10-100x before sharding is needed",
          "10-100x", "ratio of the fixed query against 10x", names=("fix queries and cache before sharding: 10-100x",),
          threshold=10),
    Claim("11-vertical-first", "11_scaling_out", "scale vertically first", "simpler, no consistency problems",
          "throughput 1 -> 2 cores vs 1 -> 2 nodes", names=("scale vertically first",)),
    Claim("11-read-your-writes", "11_scaling_out", "reads routed to a replica can return a value just overwritten",
          "a user updates their display name and immediately sees the old one", "stale reads counted per routing",
          names=("read-your-writes: the updated display name reads back old",)),
    Claim("11-stackoverflow", None, "Stack Overflow serves 1.3 billion page views a month from 9 web and 4 SQL servers",
          "1.3 B page views / month, 9 + 4 servers", "not judged",
          not_measurable="another company's fleet and traffic"),
    Claim("11-instagram", None, "Instagram ran one PostgreSQL instance until 30 million users",
          "30 million users on a single PostgreSQL", "not judged", not_measurable="another company's history"),
)


def find(name: str, topic: str | None = None) -> Claim | None:
    """The ledger entry a printed claim ``name`` belongs to (by its ``names`` patterns)."""
    for claim in LEDGER:
        if topic and claim.topic and claim.topic != topic:
            continue
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in claim.names):
            return claim
    return None


_CLASSES = (
    (NOT_MEASURABLE, ("not testable", "not measurable", "inconclusive", "no clear difference")),
    (CONTRADICTED, ("contradicted", "not reproduced")),
    (WEAKER, ("same direction, smaller", "smaller here", "weaker", "numbers wrong")),
    (HOLDS, ("reproduced", "consistent", "confirmed", "did most of the work", "holds")),
)


def classify(verdict_text: str | None) -> str:
    """A notebook's verdict sentence as one of :data:`VERDICTS` ("no clear difference" is not measurable
    here, not contradicted: see the rule in the module docstring)."""
    text = (verdict_text or "").lower()
    for verdict, words in _CLASSES:
        if any(word in text for word in words):
            return verdict
    return NOT_RUN if not text else HOLDS


def _ci_text(ratio: dict | None) -> str:
    if not ratio or ratio.get("value") is None:
        return ""
    value = ratio["value"]
    return (f"{format_factor(value)}x (95% CI {format_factor(ratio['ci_low'], value)}x–"
            f"{format_factor(ratio['ci_high'], value)}x)")


def ledger_rows(results: list[dict], printed: list[dict], scale: str | None) -> list[dict[str, Any]]:
    """One row per ledger entry and measurement: the ledger joined with this run's printed claims and results."""
    rows = []
    for claim in LEDGER:
        base = {"id": claim.id, "topic": claim.topic, "claim": claim.ours, "article": claim.article,
                "judged": claim.judged, "scale": scale}
        mine = [p for p in printed if any(fnmatch.fnmatchcase(p.get("name", ""), pat) for pat in claim.names)]
        if mine:
            for entry in mine:
                ratio = entry.get("ratio")
                verdict = classify(entry.get("verdict"))
                why = entry.get("verdict") or ""
                if ratio and ratio.get("value") is not None:
                    # The rule of the module docstring; without a claimed factor, "faster" (1x) is the
                    # threshold for the CI checks and the notebook's own sentence decides the rest.
                    judged, reason = judge_ratio(ratio["value"], ratio["ci_low"], ratio["ci_high"],
                                                 claim.threshold if claim.threshold is not None else 1)
                    if claim.threshold is not None or judged in (NOT_MEASURABLE, CONTRADICTED):
                        verdict = judged
                        why = f"{reason} (the notebook: {entry.get('verdict')})" if entry.get("verdict") else reason
                verdict, why = at_scale(claim, verdict, why, entry.get("scale") or scale)
                if claim.not_measurable and verdict != HOLDS:
                    verdict, why = NOT_MEASURABLE, f"{claim.not_measurable}; the notebook says: {entry.get('verdict')}"
                rows.append(base | {"name": entry.get("name"), "measured": entry.get("measured"), "ci": _ci_text(ratio),
                                    "verdict": verdict, "why": why, "notebook": entry.get("notebook"),
                                    "cell": entry.get("cell"), "cell_id": entry.get("cell_id"),
                                    "scale": entry.get("scale") or scale})
            continue
        if claim.result:
            found = [r for r in results if r.get("notebook", r.get("topic")) == claim.topic
                     and fnmatch.fnmatchcase(r.get("name", ""), claim.result)]
            if found and claim.judge:
                entry = found[0]
                measured, verdict, why = claim.judge(entry)
                verdict, why = at_scale(claim, verdict, why, entry.get("scale") or scale)
                rows.append(base | {"name": entry.get("name"), "measured": measured,
                                    "ci": _ci_text(_ratio_of(entry)), "verdict": verdict, "why": why,
                                    "notebook": entry.get("notebook"), "cell": entry.get("cell"),
                                    "cell_id": entry.get("cell_id"), "scale": entry.get("scale") or scale})
                continue
        if claim.not_measurable:
            rows.append(base | {"name": None, "measured": None, "ci": "", "verdict": NOT_MEASURABLE,
                                "why": claim.not_measurable, "notebook": claim.topic, "cell": None, "cell_id": None})
            continue
        rows.append(base | {"name": None, "measured": None, "ci": "", "verdict": NOT_RUN,
                            "why": "its notebook did not run or did not record it", "notebook": claim.topic,
                            "cell": None, "cell_id": None})
    for entry in printed:  # printed but unknown to the ledger: shown, flagged (a test fails on these)
        if find(entry.get("name", "")) is None:
            rows.append({"id": "unlisted-" + slug(entry.get("name", "claim")), "topic": entry.get("notebook"),
                         "claim": entry.get("name"), "article": entry.get("article"),
                         "judged": "NOT IN THE LEDGER: add it to perflab/claims.py", "scale": entry.get("scale") or scale,
                         "name": entry.get("name"), "measured": entry.get("measured"), "ci": "",
                         "verdict": classify(entry.get("verdict")), "why": entry.get("verdict"),
                         "notebook": entry.get("notebook"), "cell": entry.get("cell"), "cell_id": entry.get("cell_id")})
    return rows


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
