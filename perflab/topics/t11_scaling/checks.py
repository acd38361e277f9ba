"""Lab 11 · Scaling out: a read router — the grader's checks.

No router runs in this process. The learner's ``open_router(primary_dsn, replica_dsn) -> (route, close)``
lives in the submission's sandbox; the solution notebook's (the reference) and the starter's (the
original) live in the reference sandbox. Each is opened and called through the drivers of
:mod:`perflab.topics.t11_scaling.drivers`, which build the DSNs on the sandbox's side (its own database
role, on its own clone, on the primary and on the streaming replica) and keep each session's dict there.
The grader drives the workload call by call: 8 users, interleaved, each writing its own display name on
the primary and reading it back, at once and then a few times ``THINK_MS`` apart, through ``route``.

* **No stale reads**: every read's rows come back to the grader, which compares them with the session's
  last write (counted here, never by the sandbox).
* **Replica share**: the reads each server served, counted by the servers themselves (scans of the
  ``profiles`` table in ``pg_stat_user_tables`` on each node, read with the grader's admin connections after
  the router's connections are ended so every backend has flushed its statistics); reads that reached
  neither server, or ran on both, are reported too.
* **Latency overhead**: one session's write-then-read cycle (one driver call, timed here around the round
  trip) against the reference router, interleaved in the same run, with the reference timed twice as a
  noise gate (``contracts.measure_gated``); the servers must have seen every statement of the timed cycles;
  it fails only when even the low end of the ratio's interval is over ``OVERHEAD_LIMIT``.

The routers' writes commit with ``synchronous_commit = on`` (options in the primary DSN the driver hands
over), as a production primary does, so the replica's lag is the replication itself, not the course
server's 200 ms WAL-writer batching.
"""
from __future__ import annotations

import random
import secrets
import time
from urllib.parse import urlsplit

from perflab import harness, stack
from perflab.grading.contracts import WrongAnswer, measure_gated, noise_note
from perflab.grading.grader import CheckResult, Check, Exercise, LabSpec, SubmissionError
from perflab.topics.t11_scaling import rig

USERS = 64
SESSIONS = 8
ITERATIONS = 10
READS_PER_WRITE = 4
THINK_MS = 15
REPLICA_SHARE_MIN = 0.5      # of the reads in the workload, served by the replica
OVERHEAD_LIMIT = 2.0         # the submission's write-then-read cycle, at most this many times the reference's
# A cycle holds a durable commit (an fsync), whose time wanders on a shared disk: longer samples than the
# shared grading preset's ~10 ms, so the medians settle.
CYCLE_PRESET = harness.Preset("grading, lab 11", min_rounds=12, max_rounds=30, target_sample_seconds=0.05,
                              budget_seconds=8.0, description="lab 11's write-then-read cycle")
MAX_STATEMENTS_PER_READ = 1.1  # scans of profiles per read on both servers together: a read runs once
CALL_TIMEOUT = 10.0
RUN_TIMEOUT = 60.0
DRIVERS = "perflab.topics.t11_scaling.drivers"

ROUTER_HINT = ("after a write, remember the WAL position it ended at (`SELECT pg_current_wal_insert_lsn()` on the "
               "same connection, after the commit) in the session; for a read, ask the replica whether it has "
               "replayed it (`SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn`) and read from the primary if not")


# ------------------------------------------------------------------------------------------------
# Plumbing: the nodes, the routers in their sandboxes, server-side counts
# ------------------------------------------------------------------------------------------------

def _db(ctx, side: str) -> tuple[str, str]:
    """(role DSN, admin DSN) of the clone a side's sandbox works on ("original" shares the reference's)."""
    if side == "submission":
        return ctx.dsn, ctx.admin_dsn
    return ctx.reference_dsn, ctx.reference_admin_dsn


def _nodes(ctx, side: str = "submission") -> dict:
    """The side's clone on both servers: the profiles table made (as its role) and replayed on the replica."""
    key = "submission" if side == "submission" else "reference"
    nodes = ctx.scratch.setdefault("nodes", {})
    if key not in nodes:
        replica = stack.ensure_replica()
        dsn, admin = _db(ctx, side)
        rig.setup_profiles(dsn, USERS)  # as the sandbox's role: its own tables, on its own clone
        replica.catch_up()
        nodes[key] = {"dsn": dsn, "admin": admin, "replica_admin": replica.url,
                      "replica_stats": replica.for_dsn(admin), "replica_port": replica.port}
    return nodes[key]


def _remote(ctx, side: str, driver: str):
    answer = {"submission": ctx.function, "reference": ctx.reference_function,
              "original": ctx.original_function}[side]("open_router")
    return answer.via(f"{DRIVERS}:{driver}", timeout=CALL_TIMEOUT)


class _Router:
    """A side's ``open_router`` opened in its sandbox; every call a time-limited driver call (JSON only)."""

    def __init__(self, ctx, side: str, nodes: dict):
        self.side = side
        self._route, self._cycle, self._close = (_remote(ctx, side, name) for name in ("route", "cycle", "close_router"))
        _remote(ctx, side, "open_router")(nodes["replica_port"])
        self.open = True

    def write(self, session: str, name: str, user_id: int) -> None:
        self._route(session, "write", [name, user_id])

    def read(self, session: str, user_id: int):
        """The display name a read returned (None if it returned no row, or not rows at all)."""
        rows = self._route(session, "read", [user_id])
        if isinstance(rows, list) and rows and isinstance(rows[0], list) and rows[0]:
            return rows[0][0]
        return None

    def cycle(self, user_id: int, name: str) -> None:
        self._cycle(user_id, name, READS_PER_WRITE)

    def close(self) -> str | None:
        """Close it; the learner's error while closing is returned (a reference's raises)."""
        if not self.open:
            return None
        self.open = False
        try:
            self._close()
        except SubmissionError as exc:
            return str(exc)
        return None


def _end_sessions(nodes) -> None:
    """End every backend still connected to the clone on both servers (a router that never closes its pool
    included): a backend flushes its statistics when it exits."""
    dbname = urlsplit(nodes["admin"]).path.lstrip("/")
    for admin in (nodes["admin"], nodes["replica_admin"]):
        with stack.connect(dsn=stack.with_database(admin, "postgres")) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND pid <> pg_backend_pid() AND backend_type = 'client backend'", (dbname,))


def _scans(nodes) -> tuple[int, int]:
    """(primary, replica) scans of ``profiles`` in the clone, counted by each server, once they stop moving."""
    last, deadline = None, time.monotonic() + 5
    while True:
        now = (rig.server_reads(nodes["admin"]), rig.server_reads(nodes["replica_stats"]))
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.15)


def _ryw(router: _Router, tag: str) -> dict:
    """The read-your-writes workload, driven from here: ``SESSIONS`` users interleaved, each ``ITERATIONS``
    times writing a new display name and reading it back ``READS_PER_WRITE`` times (at once, then
    ``THINK_MS`` apart). The grader compares every read with the session's last write."""
    reads = stale = writes = 0
    error = None
    began = time.monotonic()
    finished = 0
    try:
        for k in range(ITERATIONS):
            if time.monotonic() - began > RUN_TIMEOUT:
                break
            names, last = {}, {}
            for i in range(SESSIONS):
                user_id = i + 1
                names[i] = f"user {user_id} v{k + 1}{tag}"
                router.write(f"s{i}", names[i], user_id)
                writes += 1
                got = router.read(f"s{i}", user_id)  # at once, right after its own write
                last[i] = time.monotonic()
                reads, stale = reads + 1, stale + (got != names[i])
            for _ in range(1, READS_PER_WRITE):
                for i in range(SESSIONS):
                    wait = last[i] + THINK_MS / 1000 - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    got = router.read(f"s{i}", i + 1)
                    last[i] = time.monotonic()
                    reads, stale = reads + 1, stale + (got != names[i])
            finished += 1
    except SubmissionError as exc:
        error = str(exc)
    return {"reads": reads, "writes": writes, "stale reads": stale, "error": error,
            "unfinished": ITERATIONS - finished if not error else 0, "wall s": time.monotonic() - began}


def _workload(ctx, side: str, tag: str) -> dict:
    """One run of the workload through a side's router; where its reads went, counted by each server."""
    nodes = _nodes(ctx, side)
    before = _scans(nodes)
    router = None
    try:
        router = _Router(ctx, side, nodes)
        result = _ryw(router, tag)
    except SubmissionError as exc:  # open_router itself failed
        result = {"reads": 0, "writes": 0, "stale reads": 0, "error": str(exc), "unfinished": 0}
    finally:
        close_error = router.close() if router is not None else None
        _end_sessions(nodes)
    after = _scans(nodes)
    # Each UPDATE the grader sent scans profiles once too (the count of writes is the grader's, not the table's).
    result["primary reads"] = after[0] - before[0] - result["writes"]
    result["replica reads"] = after[1] - before[1]
    result["close_error"] = close_error
    return result


def _run_all(ctx) -> dict:
    """The submission's workload, twice, and the reference's in between (shared by the checks)."""
    if "runs" in ctx.scratch:
        return ctx.scratch["runs"]
    runs = {"submission": [], "reference": []}
    for round_ in range(2):
        for side in ("submission", "reference"):
            runs[side].append(_workload(ctx, side, tag=f" r{round_}{side[0]}{secrets.token_hex(2)}"))
    ctx.scratch["runs"] = runs
    return runs


def _total(runs: list[dict], key: str) -> int:
    return sum(run[key] for run in runs)


def _failed_run(runs: list[dict]) -> str | None:
    for run in runs:
        if run["error"]:
            return f"the router failed during the workload: {run['error']}"
        if run["unfinished"]:
            return f"the workload had not finished after {RUN_TIMEOUT:.0f} s ({run['unfinished']} of {ITERATIONS} rounds left)"
    return None


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------

def right_rows(ctx) -> CheckResult:
    """Sequential: a write then a read (after the replica has caught up) gives the written row; and a change
    made by another client, once replayed, is what the next read returns (a read runs its statement)."""
    nodes = _nodes(ctx)
    replica = stack.ensure_replica()
    router = _Router(ctx, "submission", nodes)
    try:
        for _ in range(3):
            name = f"check {secrets.token_hex(3)}"
            router.write("rows", name, USERS)
            replica.catch_up(timeout=10)
            got = router.read("rows", USERS)
            if got != name:
                return CheckResult.fail(f"route(session, READ_NAME_SQL, ({USERS},)) returned a display name of {got!r} "
                                        f"after it was set to {name!r} and the replica had replayed it: a read should "
                                        "return the statement's rows (cursor.fetchall())")
        other = f"changed elsewhere {secrets.token_hex(3)}"
        with stack.connect(dsn=nodes["dsn"]) as conn:  # another client of the same database
            conn.execute(rig.UPDATE_NAME_SQL, (other, USERS))
        replica.catch_up(timeout=10)
        got = router.read("rows", USERS)
        if got != other:
            return CheckResult.fail(f"after another client set user {USERS}'s name to {other!r} (replayed on the "
                                    f"replica too), route(session, READ_NAME_SQL, ({USERS},)) still returned {got!r}: "
                                    "a read must run its statement on a server, not answer from what the session wrote")
    finally:
        problem = router.close()
        _end_sessions(nodes)
    if problem:
        return CheckResult.fail(f"close() failed: {problem}")
    return CheckResult.ok("reads return the rows the statement selects")


def no_stale_reads(ctx) -> CheckResult:
    runs = _run_all(ctx)["submission"]
    broken = _failed_run(runs)
    if broken:
        raise SubmissionError(broken)
    reads, stale = _total(runs, "reads"), _total(runs, "stale reads")
    if stale:
        return CheckResult.fail(
            f"{stale} of {reads} reads returned a display name older than the session's own last write "
            f"(counted by the grader: {SESSIONS} users writing their name and reading it back). The replica "
            f"replays a write a little after the primary commits it; until then, {ROUTER_HINT}",
            stale=stale, reads=reads)
    served = _total(runs, "replica reads") + _total(runs, "primary reads")
    if served < 0.9 * reads:  # fresh because it never asked a server is not fresh
        return CheckResult.fail(
            f"no read returned an old name, but the servers ran only {served} of the {reads} reads: the others were "
            "answered without asking a database. A read must run its statement on the primary or the replica",
            reads=reads, served=served)
    return CheckResult.ok(f"0 stale reads in {reads} ({SESSIONS} users, {ITERATIONS} writes each, every write "
                          f"read back {READS_PER_WRITE} times), each run by a server", reads=reads)


def replica_share(ctx) -> CheckResult:
    runs = _run_all(ctx)
    mine, ref = runs["submission"], runs["reference"]
    broken = _failed_run(mine)
    if broken:
        raise SubmissionError(broken)
    reads = _total(mine, "reads")
    on_replica, on_primary = _total(mine, "replica reads"), _total(mine, "primary reads")
    share = on_replica / reads if reads else 0.0
    ref_share = _total(ref, "replica reads") / max(1, _total(ref, "reads"))
    details = {"replica_reads": on_replica, "primary_reads": on_primary, "reads": reads,
               "reference_share": round(ref_share, 3)}
    served = on_replica + on_primary
    if served < 0.9 * reads:
        return CheckResult.fail(
            f"the servers saw only {served} of the {reads} reads ({on_replica} on the replica, {on_primary} on the "
            "primary): the others were answered without asking a database (a cache in the router?). A read "
            "must run its statement on the primary or the replica", **details)
    if served > MAX_STATEMENTS_PER_READ * reads:
        return CheckResult.fail(
            f"the servers ran the read statement {served} times for {reads} reads ({on_replica} on the replica, "
            f"{on_primary} on the primary): a read should run once, on one server, not on both", **details)
    if share >= REPLICA_SHARE_MIN:
        return CheckResult.ok(f"{share:.0%} of reads served by the replica ({on_replica} of {reads}, counted by "
                              f"the servers; the reference: {ref_share:.0%})", **details)
    if ref_share < REPLICA_SHARE_MIN + 0.1:
        return CheckResult.inconclusive(
            f"{share:.0%} of reads reached the replica, but in this run even the reference router managed only "
            f"{ref_share:.0%}: the replica lagged unusually far behind. Rerun the grader", **details)
    return CheckResult.fail(
        f"only {share:.0%} of reads were served by the replica ({on_replica} of {reads}, counted by the servers "
        f"themselves; at least {REPLICA_SHARE_MIN:.0%} expected, the reference router: {ref_share:.0%}). Sending "
        "reads to the primary is always fresh, but then the replica does no work: send a read to the replica "
        "as soon as it has replayed the session's last write (and always when the session has not written)",
        **details)


def _overhead_decided(result, noise: float) -> bool:
    """`measure_gated`'s ``decided`` for the overhead verdict: within the limit or over it, whatever the noise."""
    overhead = result.ratio("submission", "reference")
    return overhead.ci_high * noise <= OVERHEAD_LIMIT or overhead.ci_low / noise > OVERHEAD_LIMIT


def bounded_overhead(ctx) -> CheckResult:
    """One session's write-then-read cycle: the starter, the reference (twice) and the submission, interleaved,
    each a driver call in its own sandbox, timed here around the call."""
    nodes = {"submission": _nodes(ctx, "submission"), "reference": _nodes(ctx, "reference")}
    routers: dict = {}
    calls = {"submission": 0}
    rng = random.Random()
    try:
        for side in ("original", "reference", "submission"):
            routers[side] = _Router(ctx, side, nodes["submission" if side == "submission" else "reference"])
        routers["submission"].read("warm", USERS)  # fails here, not inside the timing
        before = _scans(nodes["submission"])

        def cycle(side):
            if side == "submission":
                calls["submission"] += 1
            # A fresh name and user each time: nothing to answer from a cache.
            routers[side].cycle(rng.randrange(1, USERS + 1), f"cycle {secrets.token_hex(4)}")
            return None  # what the reads return is judged by the stale-read check, not here

        try:
            result = measure_gated(*(lambda s=side: cycle(s) for side in ("original", "reference", "submission")),
                                   preset=CYCLE_PRESET, decided=_overhead_decided)
        except WrongAnswer as exc:  # cannot happen (every cycle returns None); kept for the contract's shape
            return CheckResult.fail(str(exc))
    finally:
        for router in routers.values():
            router.close()
        for side_nodes in nodes.values():
            _end_sessions(side_nodes)
    after = _scans(nodes["submission"])
    seen, expected = sum(after) - sum(before), calls["submission"] * (1 + READS_PER_WRITE)
    if seen < expected:
        return CheckResult.fail(
            f"in the {calls['submission']} timed cycles (a write and {READS_PER_WRITE} reads each) the servers ran "
            f"only {seen} of the {expected} statements on profiles: a cycle that skips the database is not faster, "
            "it is not done", seen=seen, expected=expected)
    overhead = result.ratio("submission", "reference")
    ms = {name: result.median_seconds(name) * 1000 for name in ("reference", "submission")}
    details = {"overhead": str(overhead), "reference_ms": round(ms["reference"], 3),
               "submission_ms": round(ms["submission"], 3)}
    if overhead.value <= OVERHEAD_LIMIT:
        return CheckResult.ok(f"a write and {READS_PER_WRITE} reads take {ms['submission']:.2f} ms through your "
                              f"router, {ms['reference']:.2f} ms through the reference ({overhead.value:.2f}x, at "
                              f"most {OVERHEAD_LIMIT:g}x allowed){noise_note(result)}", **details)
    if overhead.ci_low <= OVERHEAD_LIMIT:
        return CheckResult.inconclusive(
            f"a write and {READS_PER_WRITE} reads: {ms['submission']:.2f} ms through your router, {ms['reference']:.2f} ms "
            f"through the reference, which is {overhead}: the interval includes the {OVERHEAD_LIMIT:g}x limit, so this run "
            "cannot tell; rerun the grader", **details)
    return CheckResult.fail(
        f"a write and {READS_PER_WRITE} reads take {ms['submission']:.2f} ms through your router against "
        f"{ms['reference']:.2f} ms through the reference, which is {overhead}; at most {OVERHEAD_LIMIT:g}x is allowed"
        f"{noise_note(result)}. "
        "Waiting for the replica costs the replication lag on every read after a write: wait a few milliseconds "
        "at most, then read from the primary", **details)


LAB = LabSpec(
    id="11",
    title="Scaling out: a read router",
    solution="11_scaling_out.ipynb",
    needs_replica=True,
    cell_timeout=120,
    total_timeout=600,
    namespace="perflab.topics.t11_scaling.rig:NAMESPACE",
    exercises=[
        Exercise("router", "Read from the replica, but never your own past", None, ["open_router"], [
            Check("reads return the selected rows", right_rows, 1),
            Check("no stale reads of a session's own writes", no_stale_reads, 2),
            Check(f"at least {REPLICA_SHARE_MIN:.0%} of reads served by the replica", replica_share, 2),
            Check(f"latency at most {OVERHEAD_LIMIT:g}x the reference router's", bounded_overhead, 1),
        ]),
    ],
)
