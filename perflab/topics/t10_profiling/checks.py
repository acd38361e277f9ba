"""Lab 10 · Profiling — the grader's checks.

Exercise 1 names the slow report's top hotspot: checked against a cProfile profile of the original
report (the lab's starter, from the solution notebook) that the grader has run in the *reference*
sandbox, which runs course code only (the function of the report with the largest cumulative time; if
the top two are within ``CLOSE_CALL`` of each other, either is accepted).

Exercise 2 fixes it. Correctness: the same report text as the original for several limits. The
performance contract, valid on any machine: statements counted by the server (no N+1), the speed-up
over the original measured in this same run (``measure_gated``: at least ``MIN_SPEEDUP``), and the
peak memory of one report (at most ``MAX_MEMORY_SHARE`` of the original's).

Nothing the learner wrote runs here. ``basket_report`` runs in the submission's sandbox through
``drivers.py`` (a psycopg connection on the sandbox's own role and clone); the original and the
reference come from the solution notebook and run the same way in the reference sandbox. What is
judged is measured from outside the submission's process:

- **statements** are counted by the server for the submission's database *role* (any connection);
- **times** are taken by the grader around each remote call;
- **memory**: tracemalloc's peak is reported by the process that ran the code, so it is backed by the
  grader's own reading of that process's resident memory (``VmHWM`` in ``/proc``, its high-water mark
  reset just before the call, in a freshly started sandbox process, which must start no other process);
  both must stay within the bound;
- **fresh data**: before every call the grader itself (logged in as that side's role, never as a
  superuser on a clone the learner owns) adds a new newest order of a key account, a copy of a random
  one, so the report must start with it: a report kept from an earlier call is wrong, and no check
  passes on a report that was not computed from the database during the call.
"""
from __future__ import annotations

from collections import Counter


from perflab import harness, memory
from perflab.grading import fresh
from perflab.grading.contracts import gain_decided, noise_note
from perflab.grading.grader import Check, CheckResult, Exercise, Inconclusive, LabSpec, SubmissionError
from perflab.topics.t10_profiling.rig import REPORT_FUNCTIONS, REPORT_LIMIT

NAME = "basket_report"
LIMIT = REPORT_LIMIT
CHECK_LIMITS = (LIMIT, 0, 1, 777)
MAX_STATEMENTS = 10
MIN_SPEEDUP = 3.0
MAX_MEMORY_SHARE = 0.30
CLOSE_CALL = 1.15
CALL_TIMEOUT = 60.0
# The speed check times reports of SPEED_LIMIT orders: the original's N+1 costs ~0.1-0.8 s per report at
# this size (one query per key-account order), so ten interleaved rounds of all four variants fit in a few
# seconds; the ratio to the original does not depend on the size (both sides are linear in it).
SPEED_LIMIT = 2_000
SPEED_PRESET = harness.Preset("grading-report", min_rounds=10, max_rounds=20, target_sample_seconds=0.02,
                              budget_seconds=4.0, description="lab 10 speed check: ~3-10 s")
DRIVERS = "perflab.topics.t10_profiling.drivers"
REPORT = f"{DRIVERS}:report"
CONNECT = f"{DRIVERS}:connect"
PROFILE = f"{DRIVERS}:profile"
PEAK = f"{DRIVERS}:peak"
# Two freshly started sandbox processes differ by up to this much resident memory before any call.
READY_SLACK = 128 * 1024

KEY_ACCOUNT_ORDERS = """
SELECT o.id FROM orders AS o
JOIN (SELECT id FROM customers WHERE tier = 'enterprise' ORDER BY id LIMIT 200) AS c ON c.id = o.customer_id
ORDER BY o.id"""


# ------------------------------------------------------------------------------------------------
# Fresh data, added by the grader
# ------------------------------------------------------------------------------------------------

def _feeder(ctx) -> fresh.Feeder:
    """A new newest key-account order in each clone before every call (perflab/grading/fresh.py)."""
    return fresh.feeder(ctx, NAME, KEY_ACCOUNT_ORDERS)


def _starts_with(report, order_id: int) -> bool:
    """The report's first line is order ``order_id`` (``format_line`` right-aligns the id)."""
    return isinstance(report, str) and report.lstrip().split(" ", 1)[0] == str(order_id)


def _remote(ctx, side: str, driver: str, timeout: float = CALL_TIMEOUT):
    if side == "submission":
        return ctx.function(NAME).via(driver, timeout=timeout)
    if side == "reference":
        return ctx.reference_function(NAME).via(driver, timeout=timeout)
    return ctx.original_function(NAME).via(driver, timeout=timeout)


# ------------------------------------------------------------------------------------------------
# Exercise 1: name the hotspot
# ------------------------------------------------------------------------------------------------

def names_the_top_hotspot(ctx) -> CheckResult:
    answer = ctx.answers["TOP_HOTSPOT"]
    if not isinstance(answer, str):
        raise SubmissionError(f"TOP_HOTSPOT should be a string (a function's name), not {type(answer).__name__}")
    named = answer.strip().removesuffix("()").strip()
    if named not in REPORT_FUNCTIONS:
        return CheckResult.fail(f"TOP_HOTSPOT is {answer!r}; name one of the report's functions: "
                                f"{', '.join(REPORT_FUNCTIONS)}")
    # The original's code only, in the reference sandbox: a profile no submission can touch.
    measured = _remote(ctx, "original", PROFILE, timeout=120)(list(REPORT_FUNCTIONS))
    ranking = [(name, float(seconds)) for name, seconds in measured["ranking"]]
    total = float(measured["total"]) or 1.0
    (top, top_seconds), (second, second_seconds) = ranking[0], ranking[1]
    accepted = {top} | ({second} if top_seconds < CLOSE_CALL * second_seconds else set())
    table = ", ".join(f"{name} {seconds / total:.0%}" for name, seconds in ranking)
    calls = int(measured["calls"][top])
    if named in accepted:
        return CheckResult.ok(f"yes: in the grader's profile {named}() has the most cumulative time "
                              f"({table})", ranking=ranking)
    return CheckResult.fail(
        f"not {named}(): in the grader's own profile of the original report, {top}() has the most "
        f"cumulative time ({table}; {calls:,} calls). Profile the original (cProfile, sorted by cumulative "
        "time) and read the calls column", ranking=ranking)


# ------------------------------------------------------------------------------------------------
# Exercise 2: fix it
# ------------------------------------------------------------------------------------------------

def _observed(ctx) -> dict:
    """``{limit: (submitted report, original's report, counted statements, the order added before)}``;
    the sandbox's connection is opened before any window (``CONNECT``)."""
    return fresh.observe(ctx, _feeder(ctx), _remote(ctx, "submission", REPORT), _remote(ctx, "original", REPORT),
                         _remote(ctx, "submission", CONNECT), CHECK_LIMITS)


def same_report(ctx) -> CheckResult:
    for limit, (got, expected, _, _) in _observed(ctx).items():
        if got != expected:
            if not isinstance(got, str):
                return CheckResult.fail(f"basket_report(conn, {limit}) returned a {type(got).__name__}, "
                                        "not the report's text")
            want, have = expected.splitlines(), got.splitlines()
            first = next((i for i, (a, b) in enumerate(zip(want, have)) if a != b), min(len(want), len(have)))
            shown = have[first] if first < len(have) else "(nothing)"
            wanted = want[first] if first < len(want) else "(nothing)"
            return CheckResult.fail(
                f"basket_report(conn, {limit}) differs from the original's report from line {first + 1} "
                f"({len(have)} lines, the original {len(want)}): expected {wanted.strip()!r}, got "
                f"{shown.strip()!r}. Keep the order (newest first), the formatting and the total line")
    return CheckResult.ok(f"the same report as the original for limits {', '.join(map(str, CHECK_LIMITS))}")


def no_n_plus_one(ctx) -> CheckResult:
    got, _, statements, new_id = _observed(ctx)[LIMIT]
    if not statements or not _starts_with(got, new_id):
        return CheckResult.fail(
            f"the server saw {len(statements)} statement(s) from your code for one {LIMIT:,}-order report, and the "
            f"report does not start with order {new_id}, which the grader added just before the call: it was not "
            "computed from the database during the call (a kept or made-up report is not judged)")
    if len(statements) <= MAX_STATEMENTS:
        return CheckResult.ok(f"{len(statements)} statement(s) for a {LIMIT:,}-order report (counted by the server)")
    shapes = "; ".join(f"{n:,} x {shape[:70]}" for shape, n in Counter(s.shape for s in statements).most_common(2))
    return CheckResult.fail(f"{len(statements):,} statements for one {LIMIT:,}-order report (at most {MAX_STATEMENTS} "
                            f"expected): {shapes}. One query per order is an N+1: fetch the item counts and "
                            "values for all the orders at once (a JOIN with GROUP BY)")


def faster(ctx) -> CheckResult:
    submission = _remote(ctx, "submission", REPORT)
    original = _remote(ctx, "original", REPORT)
    reference = _remote(ctx, "reference", REPORT)
    verdict = fresh.measure(_feeder(ctx), original, reference, submission, arg=SPEED_LIMIT, preset=SPEED_PRESET,
                            starts_with=_starts_with, answer="report", decided=gain_decided(MIN_SPEEDUP))
    if isinstance(verdict, CheckResult):
        return verdict
    result = verdict
    gain = result.ratio("original", "submission")
    reference_gain = result.ratio("original", "reference")
    details = {"submission": str(gain), "reference": str(reference_gain)}
    if gain.clear and gain.value >= MIN_SPEEDUP:
        return CheckResult.ok(f"{gain.value:.1f}x faster than the original (the reference fix: "
                              f"{reference_gain.value:.1f}x){noise_note(result)}", **details)
    return CheckResult.fail(f"against the original: {gain}; at least {MIN_SPEEDUP:g}x is expected (the reference fix: "
                            f"{reference_gain.value:.1f}x){noise_note(result)}. Fix the hotspot the profile names "
                            "first", **details)


# -- memory ----------------------------------------------------------------------------------------

def _status_kb(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def _children_ticks(pid: int) -> int:
    """CPU ticks of the process's waited-for children (``cutime + cstime``): work done in a child shows here."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[13]) + int(fields[14])


def _resident(ctx, side: str) -> tuple[int, int]:
    """``(resident bytes once ready, growth during one report)`` of a freshly started sandbox process.

    The grader reads both from ``/proc``: the resident size after the process started and opened its
    connection (the answers are loaded by then: whatever they did on loading is in it), and the high-water
    mark during one report (reset just before the call via ``clear_refs``) above the resident size then.
    No answer runs before the measured call, which sees a fresh order (so nothing kept from elsewhere
    serves it), and the process must do the work itself: no other process in its sandbox and no
    child's CPU time during the call."""
    box = ctx.sandbox("submission" if side == "submission" else "reference")
    box.close()                                    # the next call starts a fresh process
    _remote(ctx, side, CONNECT)()
    pid = box.proc.pid
    ready = _status_kb(pid)["VmRSS"]
    new_id = _feeder(ctx).add("submission" if side == "submission" else "reference")
    ticks = _children_ticks(pid)
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")                               # reset the peak resident size (VmHWM) to the current one
    before = _status_kb(pid)["VmRSS"]
    text = _remote(ctx, side, REPORT)(LIMIT)
    after = _status_kb(pid)["VmHWM"]
    if side == "submission":
        if [p for p in box.box.alive() if p != pid] or _children_ticks(pid) != ticks:
            raise SubmissionError(f"{NAME} started another process to do its work; the report's memory is measured "
                                  "in the process that runs it, so do the work there")
        if not _starts_with(text, new_id):
            raise SubmissionError(f"the report whose memory was measured does not start with order {new_id}, which "
                                  "the grader added just before the call: it was not computed during the call")
    return ready * 1024, max(0, after - before) * 1024


def less_memory(ctx) -> CheckResult:
    # From outside: each report in a fresh process, its resident memory read by the grader. Memory the
    # submission's process holds beyond the reference sandbox's once both are ready (loaded on the side,
    # before the call) counts as the report's too.
    try:
        original_ready, original_rss = _resident(ctx, "original")
    except OSError as exc:  # no /proc (not Linux): the inside measurement alone cannot be trusted
        raise Inconclusive(f"the grader cannot read the sandbox's memory on this machine ({exc})") from None
    try:
        submitted_ready, submitted_rss = _resident(ctx, "submission")
    except (FileNotFoundError, ProcessLookupError):
        raise SubmissionError("the process running your code ended while its memory was measured (os._exit, "
                              "a crash, or a memory limit?)") from None
    held = max(0, submitted_ready - original_ready - READY_SLACK)
    # From inside (tracemalloc, finer): reported by the process that ran the code, so never enough alone.
    original = int(_remote(ctx, "original", PEAK)(LIMIT))
    submitted = int(_remote(ctx, "submission", PEAK)(LIMIT))
    share = submitted / max(original, 1)
    rss_share = (submitted_rss + held) / max(original_rss, 1)
    text = (f"peak {memory.format_bytes(submitted)} during one report, {share:.0%} of the original's "
            f"{memory.format_bytes(original)} (tracemalloc); resident memory grew by "
            f"{memory.format_bytes(submitted_rss + held)}, {rss_share:.0%} of the original's "
            f"{memory.format_bytes(original_rss)} (measured by the grader)")
    details = {"share": share, "rss_share": rss_share, "ready": [original_ready, submitted_ready]}
    if share <= MAX_MEMORY_SHARE and rss_share <= MAX_MEMORY_SHARE:
        return CheckResult.ok(text, **details)
    return CheckResult.fail(f"{text}; at most {MAX_MEMORY_SHARE:.0%} is expected. Do not load every column of every "
                            "order into a list: select only the columns the report prints and stream the rows "
                            "(a server-side cursor: conn.cursor(name=...))", **details)


LAB = LabSpec(
    id="10",
    title="Profiling: find it, then fix it",
    solution="10_profiling.ipynb",
    cell_timeout=120,
    total_timeout=600,
    namespace="perflab.topics.t10_profiling.rig:NAMESPACE",
    exercises=[
        Exercise("hotspot", "Name the top hotspot", None, ["TOP_HOTSPOT"], [
            Check("matches the grader's own profile", names_the_top_hotspot, 2),
        ]),
        Exercise("fix", "Fix the report: time and memory", None, ["basket_report"], [
            Check("same report as the original", same_report, 2),
            Check(f"no N+1: at most {MAX_STATEMENTS} statements", no_n_plus_one, 1),
            Check(f"at least {MIN_SPEEDUP:g}x faster than the original", faster, 1),
            Check(f"peak memory at most {MAX_MEMORY_SHARE:.0%} of the original's", less_memory, 1),
        ]),
    ],
)
