"""Lab 11 · Scaling out: a read router — the grader's checks.

The learner's ``open_router(primary_dsn, replica_dsn) -> (route, close)`` is re-created from its source in
this process (``ctx.function``) and called only through :func:`_call` (``call_submitted``, one place). The
grader runs the workload itself: 8 users in parallel, each writing its own display name on the primary
and reading it back, immediately and then a few times ``THINK_MS`` apart, through ``route``.

* **No stale reads**: a read that returns any other name than the session's last write is counted here.
* **Replica share**: the reads each server served, counted by the servers themselves (scans of the
  ``profiles`` table in ``pg_stat_user_tables`` on each node, after the router's connections are closed so
  every backend has flushed its statistics); reads that reached neither server are reported too.
* **Latency overhead**: one session's write-then-read cycle timed against the reference router, interleaved
  in the same run, with the reference timed twice as a noise gate (``contracts.measure_gated``); it fails only
  when even the low end of the ratio's interval is over ``OVERHEAD_LIMIT``.

The grader's writes commit with ``synchronous_commit = on`` (options in the primary DSN it hands over), as a
production primary does, so the replica's lag is the replication itself, not the course server's 200 ms
WAL-writer batching.
"""
from __future__ import annotations

import secrets
import threading
import time
from urllib.parse import urlsplit

import psycopg

from perflab import harness, stack
from perflab.grading.contracts import WrongAnswer, measure_gated
from perflab.grading.grader import CheckResult, Check, Exercise, LabSpec, SubmissionError, call_submitted
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
CALL_TIMEOUT = 10.0
RUN_TIMEOUT = 60.0

NAMESPACE = {"psycopg": psycopg, "time": time, "threading": threading,
             "UPDATE_NAME_SQL": rig.UPDATE_NAME_SQL, "READ_NAME_SQL": rig.READ_NAME_SQL}

ROUTER_HINT = ("after a write, remember the WAL position it ended at (`SELECT pg_current_wal_insert_lsn()` on the "
               "same connection, after the commit) in the session; for a read, ask the replica whether it has "
               "replayed it (`SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn`) and read from the primary if not")


# ------------------------------------------------------------------------------------------------
# The reference answer and the wrong routers the tests use
# ------------------------------------------------------------------------------------------------

def _pools(primary_dsn, replica_dsn):
    from psycopg_pool import ConnectionPool

    kwargs = {"autocommit": True}
    primary = ConnectionPool(primary_dsn, min_size=1, max_size=SESSIONS, kwargs=kwargs, open=True)
    replica = ConnectionPool(replica_dsn, min_size=1, max_size=SESSIONS, kwargs=kwargs, open=True)
    return primary, replica


def _run(pool, sql, params):
    with pool.connection() as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


def reference_router(primary_dsn, replica_dsn):
    """Reads go to the replica once it has replayed the session's last write; until then, to the primary."""
    primary, replica = _pools(primary_dsn, replica_dsn)

    def route(session, sql, params=(), write=False):
        if write:
            with primary.connection() as conn:
                cur = conn.execute(sql, params)
                rows = cur.fetchall() if cur.description else None
                session["lsn"] = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()[0]
            return rows
        lsn = session.get("lsn")
        if lsn is not None:
            with replica.connection() as conn:
                caught_up = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]
            if not caught_up:
                return _run(primary, sql, params)
            session.pop("lsn")  # replayed once, replayed for good: no need to ask again
        return _run(replica, sql, params)

    def close():
        primary.close()
        replica.close()

    return route, close


def naive_router(primary_dsn, replica_dsn):
    """The starter: writes to the primary, every read to the replica."""
    primary, replica = _pools(primary_dsn, replica_dsn)

    def route(session, sql, params=(), write=False):
        return _run(primary if write else replica, sql, params)

    return route, lambda: (primary.close(), replica.close())


# ------------------------------------------------------------------------------------------------
# Plumbing: the nodes, the one place learner code is called, server-side counts
# ------------------------------------------------------------------------------------------------

def _nodes(ctx) -> dict:
    if "nodes" not in ctx.scratch:
        replica = stack.ensure_replica()
        rig.setup_profiles(ctx.dsn, USERS)
        replica.catch_up()
        ctx.scratch["nodes"] = {
            "primary": stack.with_params(ctx.dsn, options="-c synchronous_commit=on"),
            "replica": replica.for_dsn(ctx.dsn), "replica_admin": replica.url, "admin": ctx.dsn,
        }
    return ctx.scratch["nodes"]


def _call(fn, *args, **kwargs):
    """Every call into the learner's code goes through here (and so through ``call_submitted``)."""
    return call_submitted(fn, *args, timeout=CALL_TIMEOUT, **kwargs)


class _Submitted:
    """The learner's router, opened from its recorded source; each call a time-limited ``_call``."""

    def __init__(self, ctx, nodes):
        open_router = ctx.function("open_router", NAMESPACE)
        opened = _call(open_router, nodes["primary"], nodes["replica"])
        if not (isinstance(opened, (tuple, list)) and len(opened) == 2 and all(callable(f) for f in opened)):
            raise SubmissionError(f"open_router(primary_dsn, replica_dsn) should return (route, close), two "
                                  f"functions; it returned {opened!r}")
        self._route, self._close = opened

    def route(self, session, sql, params=(), write=False):
        return _call(self._route, session, sql, params, write=write)

    def close(self):
        _call(self._close)


class _Plain(_Submitted):
    """The grader's own routers, called the same way (through ``_call``), so timings compare like with like."""

    def __init__(self, factory, nodes):
        self._route, self._close = factory(nodes["primary"], nodes["replica"])


def _end_sessions(nodes) -> None:
    """End every backend still connected to the grading database on both nodes (a router that never
    closes its pool included): a backend flushes its statistics when it exits."""
    dbname = urlsplit(nodes["admin"]).path.lstrip("/")
    for admin in (nodes["admin"], nodes["replica_admin"]):
        with stack.connect(dsn=stack.with_database(admin, "postgres")) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                         "AND pid <> pg_backend_pid() AND backend_type = 'client backend'", (dbname,))


def _scans(nodes) -> tuple[int, int]:
    """(primary, replica) scans of ``profiles``, once the counts have stopped moving."""
    last, deadline = None, time.monotonic() + 5
    while True:
        now = (rig.server_reads(nodes["admin"]), rig.server_reads(nodes["replica"]))
        if now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.15)


def _workload(make, nodes, tag) -> dict:
    """One run of the concurrent workload through a router; where its reads went, counted by each server."""
    before = _scans(nodes)
    router = make()
    try:
        result = rig.ryw_trials(router.route, sessions=SESSIONS, trials=ITERATIONS, reads_per_write=READS_PER_WRITE,
                                think_ms=THINK_MS, tag=tag, timeout=RUN_TIMEOUT)
    finally:
        close_error = None
        try:
            router.close()
        except SubmissionError as exc:
            close_error = str(exc)
        _end_sessions(nodes)
    after = _scans(nodes)
    result["primary reads"] = after[0] - before[0] - result["writes"]  # each UPDATE scans profiles once too
    result["replica reads"] = after[1] - before[1]
    result["close_error"] = close_error
    return result


def _run_all(ctx) -> dict:
    """The submission's workload, twice, and the reference's in between (shared by the checks)."""
    if "runs" in ctx.scratch:
        return ctx.scratch["runs"]
    nodes = _nodes(ctx)
    runs = {"submission": [], "reference": []}
    for round_ in range(2):
        for name in ("submission", "reference"):
            make = (lambda: _Submitted(ctx, nodes)) if name == "submission" else (
                lambda: _Plain(reference_router, nodes))
            runs[name].append(_workload(make, nodes, tag=f" r{round_}{name[0]}{secrets.token_hex(2)}"))
    ctx.scratch["runs"] = runs
    return runs


def _total(runs: list[dict], key: str) -> int:
    return sum(run[key] for run in runs)


def _failed_run(runs: list[dict]) -> str | None:
    for run in runs:
        if run["errors"]:
            exc = run["errors"][0]
            return f"route() raised during the workload: {exc}"
        if run["unfinished"]:
            return f"{run['unfinished']} of {SESSIONS} sessions had not finished after {RUN_TIMEOUT:.0f} s"
    return None


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------

def right_rows(ctx) -> CheckResult:
    """Sequential, no concurrency: a write then a read (after the replica has caught up) gives the written row."""
    nodes = _nodes(ctx)
    router = _Submitted(ctx, nodes)
    try:
        session: dict = {}
        for k in range(3):
            name = f"check {secrets.token_hex(3)}"
            router.route(session, rig.UPDATE_NAME_SQL, (name, USERS), write=True)
            stack.ensure_replica().catch_up(timeout=10)
            rows = router.route(session, rig.READ_NAME_SQL, (USERS,))
            got = rows[0][0] if rows else None
            if got != name:
                return CheckResult.fail(f"route(session, READ_NAME_SQL, ({USERS},)) returned {rows!r} after the "
                                        f"name was set to {name!r} and the replica had replayed it: a read should "
                                        "return the statement's rows (cursor.fetchall())")
    finally:
        router.close()
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
    return CheckResult.ok(f"0 stale reads in {reads} ({SESSIONS} users, {ITERATIONS} writes each, every write "
                          f"read back {READS_PER_WRITE} times)", reads=reads)


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


def bounded_overhead(ctx) -> CheckResult:
    """One session's write-then-read cycle: reference (twice), submission, and the naive router, interleaved."""
    nodes = _nodes(ctx)
    routers = {"original": _Plain(naive_router, nodes), "reference": _Plain(reference_router, nodes)}
    try:
        routers["submission"] = _Submitted(ctx, nodes)
        user_id = USERS - 1

        def cycle(router):
            session = {}
            router.route(session, rig.UPDATE_NAME_SQL, (f"cycle {secrets.token_hex(2)}", user_id), write=True)
            for _ in range(READS_PER_WRITE):
                router.route(session, rig.READ_NAME_SQL, (user_id,))
            return None  # what the reads return is judged by the stale-read check, not here

        routers["submission"].route({}, rig.READ_NAME_SQL, (user_id,))  # fails here, not inside the timing
        try:
            result = measure_gated(*(lambda r=routers[name]: cycle(r) for name in ("original", "reference", "submission")),
                                   preset=CYCLE_PRESET)
        except WrongAnswer as exc:  # cannot happen (every cycle returns None); kept for the contract's shape
            return CheckResult.fail(str(exc))
    finally:
        for router in routers.values():
            try:
                router.close()
            except SubmissionError:
                pass
        _end_sessions(nodes)
    overhead = result.ratio("submission", "reference")
    ms = {name: result.median_seconds(name) * 1000 for name in ("reference", "submission")}
    details = {"overhead": str(overhead), "reference_ms": round(ms["reference"], 3),
               "submission_ms": round(ms["submission"], 3)}
    if overhead.value <= OVERHEAD_LIMIT:
        return CheckResult.ok(f"a write and {READS_PER_WRITE} reads take {ms['submission']:.2f} ms through your "
                              f"router, {ms['reference']:.2f} ms through the reference ({overhead.value:.2f}x, at "
                              f"most {OVERHEAD_LIMIT:g}x allowed)", **details)
    if overhead.ci_low <= OVERHEAD_LIMIT:
        return CheckResult.inconclusive(
            f"a write and {READS_PER_WRITE} reads: {ms['submission']:.2f} ms through your router, {ms['reference']:.2f} ms "
            f"through the reference, which is {overhead}: the interval includes the {OVERHEAD_LIMIT:g}x limit, so this run "
            "cannot tell; rerun the grader", **details)
    return CheckResult.fail(
        f"a write and {READS_PER_WRITE} reads take {ms['submission']:.2f} ms through your router against "
        f"{ms['reference']:.2f} ms through the reference, which is {overhead}; at most {OVERHEAD_LIMIT:g}x is allowed. "
        "Waiting for the replica costs the replication lag on every read after a write: wait a few milliseconds "
        "at most, then read from the primary", **details)


LAB = LabSpec(
    id="11",
    title="Scaling out: a read router",
    solution="11_scaling_out.ipynb",
    cell_timeout=120,
    total_timeout=600,
    exercises=[
        Exercise("router", "Read from the replica, but never your own past", None, ["open_router"], [
            Check("reads return the selected rows", right_rows, 1),
            Check("no stale reads of a session's own writes", no_stale_reads, 2),
            Check(f"at least {REPLICA_SHARE_MIN:.0%} of reads served by the replica", replica_share, 2),
            Check(f"latency at most {OVERHEAD_LIMIT:g}x the reference router's", bounded_overhead, 1),
        ]),
    ],
)
