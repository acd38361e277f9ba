"""Lab 07 · A cache that stays correct under load — the grader's checks.

The submission is two functions, ``get_dashboard(r, db, customer_id)`` and
``rename_customer(r, db, customer_id, name)``. They run in the submission's sandbox, never here: the
drivers (`perflab.topics.t07_caching.drivers`) build ``r`` (the sandbox's own throwaway Redis) and ``db``
(a `caching.ShopDB` on the sandbox's own role and clone) on that side and send back JSON. The
reference and the original (the starter) are the solution notebook's, run alike in the reference
sandbox. Every number a verdict rests on is taken from outside the sandbox:

* statements: PostgreSQL's log, by the submission's ROLE (every connection it can open is counted);
* Redis lookups: the sandbox's Redis server's own statistics (INFO keyspace_hits/misses), read by the grader;
* the truth: the dashboard computed here, on the grader's own connection to the clone (as the role);
* times: the grader's clock around the remote call.

Deterministic counters first: correct values, a repeated ``get_dashboard`` runs no statement and is
served by Redis (and, once the grader has emptied that Redis, queries again: a value kept in the
process is not a shared cache); read-your-writes; the stale-set race, forced from outside (the
reader, in a second sandbox process, is held inside its query by an advisory lock the grader holds and
sees in pg_locks, while the writer runs); a herd of 100 calls from several sandbox processes released
at once on an empty cache: at most ``MAX_STAMPEDE_QUERIES`` statements, every call gets the (freshly
renamed) right value. The invalidation checks pass only where there is a cache to invalidate.

Time only as a ratio in the same run, behind the noise gate: a hit against the query itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import secrets
import threading
import time

from perflab import harness, probes, stack
from perflab.grading.grader import Check, CheckResult, Exercise, Inconclusive, LabSpec, SubmissionError
from perflab.topics.t07_caching import rig as caching

DRIVERS = "perflab.topics.t07_caching.drivers"

CONCURRENT_MISSES = 100
# The herd comes from this many sandbox processes, released together by the grader (100 threads in all):
# an application has several processes, and a lock inside one process is no stampede protection for the
# others. More processes than MAX_STAMPEDE_QUERIES also means no in-process trick (calls made one by one,
# a patched thread barrier) can hide a missing shared lock: each process alone is a concurrent miss.
HERD_PROCESSES = 4
HERD_POOL_SIZE = 8  # connections per herd process (the role may open 64 in all)
MAX_STAMPEDE_QUERIES = 2
HIT_SPEEDUP = 10.0  # a hit must be at least this much faster than the query...
HIT_SHARE = 0.5  # ...or, on a machine where the reference gets less than 2x that, half the reference's gain
# The contract is a 10x gap, so the reference may disagree with itself by up to 2x (both CI ends)
# before this run is too noisy to judge — a tighter gate (grading.contracts' 1.25x) only makes a
# busy machine say "rerun" about a difference it could not possibly blur. A sample loops calls for
# ~20 ms, so one slow round trip does not make a sample: ~3-5 s per attempt.
HIT_NOISE_LIMIT = 2.0
HIT_PRESET = harness.Preset("grading-hits", min_rounds=10, max_rounds=20, target_sample_seconds=0.02,
                            budget_seconds=4.0, description="lab 07 hit check: ~3-5 s")
# One timed call of a cache runs this many gets in the sandbox (a hit is ~0.1 ms, the round trip ~0.2 ms):
# ratios against the query (one get per call) are per get. A submission whose single warm get already takes
# longer than HIT_SLOW_CALL is timed one get per call (its verdict is clear either way, and fast).
HIT_REPEAT = 20
HIT_SLOW_CALL = 0.005
CALL_TIMEOUT = 15.0
RACE_TIMEOUT = 45.0
PARK_TIMEOUT = 15.0  # the reader's query must be waiting on the grader's lock within this
WRITER_WAIT = 5.0  # a writer still running after this (waiting for the parked reader?) is let through
HERD_TIMEOUT = 90.0

# The learner's functions may use these without importing them (json, pickle, msgpack, ...).
NAMESPACE = "perflab.topics.t07_caching.rig:NAMESPACE"


def _driver(name: str) -> str:
    return f"{DRIVERS}:{name}"


def _prefix() -> str:
    return f"perflab:grade07:{secrets.token_hex(4)}:"


def _submitted(ctx, driver: str, answer: str = "get_dashboard", timeout: float = CALL_TIMEOUT):
    """The learner's answer through a driver of this lab, in the submission's sandbox."""
    return ctx.function(answer).via(_driver(driver), timeout)


@contextlib.contextmanager
def _closing(ctx, prefix: str, sides: tuple[str, ...] = ("submission",)):
    """Close the sandboxes' pools for ``prefix`` afterwards (a role has a connection limit)."""
    try:
        yield prefix
    finally:
        for side in sides:
            with contextlib.suppress(Exception):
                ctx.call(side, None, prefix, driver=_driver("close"), timeout=CALL_TIMEOUT)


# The grader reads and writes the clone through its own connection, logged in as the submission's ROLE,
# not as the admin: the role owns the clone's tables, and a view or trigger it planted there would run
# with the privileges of whoever queries it. Never inside a statement probe (the role's statements are
# the submission's count).
def _truth(ctx, customer: int) -> dict:
    """The dashboard as the clone has it now, computed by the grader (not by the sandbox)."""
    with caching.ShopDB(ctx.dsn, pool_size=1) as db:
        return db.dashboard(customer)


def _hot(ctx) -> int:
    if "hot" not in ctx.scratch:
        with caching.ShopDB(ctx.dsn, pool_size=1) as db:
            ctx.scratch["hot"] = db.hot_customer()
    return ctx.scratch["hot"]


def _other_than_hot(ctx, customer: int) -> int:
    """A customer to rename that is not the hot one (the timed and the herd checks read the hot one)."""
    hot = _hot(ctx)
    return customer if customer != hot else customer + 100


@contextlib.contextmanager
def _statements(ctx):
    """Every statement any connection of the submission's role sends in the block, from PostgreSQL's log.

    The server writes its log asynchronously: a fence (a statement of the role, waited for in the log)
    first makes sure nothing sent before the block (the grader's own reads as the role, the sandbox's
    earlier calls) is still on its way and counted in the block."""
    admin = ctx.admin_dsn
    with probes.admin_connection(admin) as conn:
        start = probes.log_position(conn)
    probes.tagged_log_entries(admin, ctx.dsn, f"perflab-fence-{secrets.token_hex(6)}", start, role=ctx.role)
    with ctx.count_statements(admin) as probe:
        yield probe


def _dashboard_queries(probe) -> int:
    return sum(caching.DASHBOARD_MARKER in s.sql for s in probe.statements)


def _redis(ctx):
    """The grader's own client of the submission's Redis server (for its statistics and to empty it)."""
    if "redis" not in ctx.scratch:
        ctx.scratch["redis"] = stack.redis_client(ctx.redis_url("submission"), max_connections=4)
    return ctx.scratch["redis"]


def _redis_lookups(ctx) -> int:
    """Key lookups the submission's Redis server has served (hits and misses), by its own count."""
    stats = _redis(ctx).info("stats")
    return int(stats["keyspace_hits"]) + int(stats["keyspace_misses"])


def _rename_as_grader(ctx, customer: int, name: str) -> None:
    with stack.connect(dsn=ctx.dsn) as conn:
        conn.execute("UPDATE customers SET name = %s WHERE id = %s", (name, customer))


def _quantity(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------

def correct_values(ctx) -> CheckResult:
    hot = _hot(ctx)
    customers = [hot, 2, 3, 1500]
    get = _submitted(ctx, "get")
    with _closing(ctx, _prefix()) as prefix:
        for customer in customers:
            truth = _truth(ctx, customer)
            for attempt in ("first (a miss)", "second (a hit)"):
                got = get(customer, prefix)
                if got != truth:
                    return CheckResult.fail(
                        f"get_dashboard(r, db, {customer}) on the {attempt} call returned {str(got)[:120]!r}, but the "
                        f"database says {str(truth)[:120]!r}: serialize the whole value and return it unchanged")
        truth = _truth(ctx, hot)
        # The same keys through a new pool: the value must come from Redis (its own count), with no statement.
        lookups = _redis_lookups(ctx)
        with _statements(ctx) as repeat:
            got = get(hot, prefix, fresh_db=True)
        lookups = _redis_lookups(ctx) - lookups
        if repeat.count:
            return CheckResult.fail(
                f"get_dashboard(r, db, {hot}) right after a call for the same customer ran "
                f"{_quantity(repeat.count, 'statement', 'statements')} on the server: the value is not cached in "
                "Redis (store it with r.set(key, data, ex=ttl) after a miss, and look it up first)",
                statements=[s.sql[:200] for s in repeat.statements[:5]])
        if got != truth:
            return CheckResult.fail(f"get_dashboard(r, db, {hot}) from the cache returned {str(got)[:120]!r}, but the "
                                    f"database says {str(truth)[:120]!r}")
        if lookups < 1:
            return CheckResult.fail(
                f"get_dashboard(r, db, {hot}) answered a repeated call without a query and without reading Redis "
                "(its server served no lookup): a value kept in the process is not shared with the application's "
                "other processes, and their writes never invalidate it. Look the key up in Redis")
        # The grader empties Redis: the next call must go back to the database.
        _redis(ctx).flushdb()
        with _statements(ctx) as refill:
            got = get(hot, prefix)
        if not refill.count:
            return CheckResult.fail(
                f"after the grader emptied Redis, get_dashboard(r, db, {hot}) still answered without a query: the "
                "value is kept somewhere else than Redis (a dict in the process is not shared with the "
                "application's other processes, and their writes never invalidate it)")
        if got != truth:
            return CheckResult.fail(f"get_dashboard(r, db, {hot}) after a miss returned {str(got)[:120]!r}, but the "
                                    f"database says {str(truth)[:120]!r}")
    return CheckResult.ok(f"the same dashboards as the database for customers {customers}; a repeated get ran no "
                          "statement and was served by Redis")


def _per_get(ratio: harness.Ratio, gets: int) -> harness.Ratio:
    """A ratio against the query (one get per call) for variants that ran ``gets`` gets per call."""
    return dataclasses.replace(ratio, value=ratio.value * gets, ci_low=ratio.ci_low * gets,
                               ci_high=ratio.ci_high * gets)


def fast_hits(ctx) -> CheckResult:
    hot = _hot(ctx)
    driver = _driver("gets")
    original = ctx.original_function("get_dashboard").via(driver, CALL_TIMEOUT)
    reference = ctx.reference_function("get_dashboard").via(driver, CALL_TIMEOUT)
    submission = ctx.function("get_dashboard").via(driver, CALL_TIMEOUT)
    with _closing(ctx, _prefix(), ("submission", "reference")) as prefix:
        reference(hot, prefix, 1)
        submission(hot, prefix, 1)  # the miss that fills the cache
        with _statements(ctx) as repeat:
            single = []
            for _ in range(3):
                started = time.perf_counter()
                submission(hot, prefix, 1)
                single.append(time.perf_counter() - started)
        if repeat.count:
            return CheckResult.fail(
                f"a repeated get_dashboard(r, db, {hot}) ran {_quantity(repeat.count, 'statement', 'statements')} on "
                "the server: it is not a hit, so its speed is not judged (see the correctness check)")
        repeat_submission = HIT_REPEAT if min(single) < HIT_SLOW_CALL else 1
        calls = {"submission": 0}

        def submitted():
            calls["submission"] += 1
            return submission(hot, prefix, repeat_submission)

        variants = {"original": lambda: original(hot, prefix, 1), "reference": lambda: reference(hot, prefix, HIT_REPEAT),
                    "reference again": lambda: reference(hot, prefix, HIT_REPEAT), "submission": submitted}
        for _ in range(3):
            lookups = _redis_lookups(ctx)
            calls["submission"] = 0
            try:
                result = harness.compare(variants, preset=HIT_PRESET)
            except harness.AnswerMismatch:
                return CheckResult.fail("get_dashboard() returned a different value from the database's, so its "
                                        "speed is not judged (see the correctness check)")
            lookups = _redis_lookups(ctx) - lookups
            noise = result.ratio("reference", "reference again")
            reference_gain = _per_get(result.ratio("original", "reference"), HIT_REPEAT)
            gain = _per_get(result.ratio("original", "submission"), repeat_submission)
            needed = min(HIT_SPEEDUP, HIT_SHARE * reference_gain.value)
            # Even the low end of the CI clears the bar: noise can blur a ratio, not invent a 10x one.
            if gain.ci_low >= needed:
                break
            if 1 / HIT_NOISE_LIMIT <= noise.ci_low and noise.ci_high <= HIT_NOISE_LIMIT:
                break
        else:
            raise Inconclusive(f"this machine was too noisy to judge speed (the reference cache against itself: "
                               f"{noise.ci_low:.2f}x–{noise.ci_high:.2f}x); rerun the grader")
    # The physical floor of a hit is one Redis lookup: the server must have served one per timed get.
    gets = calls["submission"] * repeat_submission
    details = {"reference": str(reference_gain), "submission": str(gain), "gets": gets, "redis_lookups": lookups}
    if lookups < gets:
        return CheckResult.fail(
            f"{gets} timed calls of get_dashboard(r, db, {hot}) made Redis serve only {lookups} lookups: a hit must "
            "read the value from Redis (a copy kept in the process is not shared, nor ever invalidated)", **details)
    if gain.clear and gain.value >= needed:
        return CheckResult.ok(f"a hit is {gain.value:.0f}x faster than the query (the reference cache: "
                              f"{reference_gain.value:.0f}x)", **details)
    return CheckResult.fail(
        f"a repeated get_dashboard(r, db, {hot}) against the query itself: {gain}; at least {needed:.0f}x is expected "
        f"(the reference cache: {reference_gain.value:.0f}x on this machine). A hit should be one GET and a "
        "deserialization: no query, no extra round trips", **details)


def _no_cache_yet(customer: int, statements: int) -> CheckResult:
    # Nothing cached, nothing stale: a check of invalidation passes only where there is a cache to invalidate.
    return CheckResult.fail(
        f"a repeated get_dashboard(r, db, {customer}) ran {_quantity(statements, 'statement', 'statements')} on the "
        "server: nothing is cached yet, so there is nothing to keep correct after writes (do the cache-aside "
        "exercise first)")


def read_your_writes(ctx) -> CheckResult:
    customer = _other_than_hot(ctx, 3)
    get, rename = _submitted(ctx, "get"), _submitted(ctx, "rename", "rename_customer")
    with _closing(ctx, _prefix()) as prefix:
        before = get(customer, prefix)
        with _statements(ctx) as repeat:
            get(customer, prefix)
        if repeat.count:
            return _no_cache_yet(customer, repeat.count)
        new_name = f"Renamed {secrets.token_hex(3)}"
        rename(customer, new_name, prefix)
        truth = _truth(ctx, customer)
        if truth["name"] != new_name:
            return CheckResult.fail("after rename_customer() the database still has the old name: call "
                                    "db.rename(customer_id, name)")
        after = get(customer, prefix)
    if not isinstance(after, dict) or after.get("name") != new_name:
        shown = after.get("name") if isinstance(after, dict) else after
        return CheckResult.fail(
            f"after rename_customer(r, db, {customer}, {new_name!r}) returned, get_dashboard still shows "
            f"{str(shown)[:80]!r} (it was {str(before.get('name') if isinstance(before, dict) else before)[:80]!r}): "
            "a stale cache. After the database commit, delete the key (the next get refills it) — a TTL alone "
            "leaves the old value until it expires")
    if after != truth:
        return CheckResult.fail(f"after rename_customer(), get_dashboard(r, db, {customer}) returned "
                                f"{str(after)[:120]!r}, but the database says {str(truth)[:120]!r}")
    return CheckResult.ok("get_dashboard after rename_customer shows the new name")


def _parked_reader(admin, lock: tuple[int, int], role: str) -> str | None:
    """The query of the role's backend waiting for the grader's advisory lock ``lock``, if one is waiting."""
    row = admin.execute(
        "SELECT a.query FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND l.classid::bigint = %s AND l.objid::bigint = %s "
        "AND l.objsubid = 2 AND a.usename = %s", (lock[0], lock[1], role)).fetchone()
    return row[0] if row else None


def no_stale_set(ctx) -> CheckResult:
    """The stale-set race, forced from outside the sandbox.

    A reader (``get_dashboard`` in a second sandbox process, on an empty cache) runs its dashboard query;
    the statement takes its snapshot (the old name) and then waits for an advisory lock the grader holds,
    which the grader sees in pg_locks. The writer (``rename_customer``, in the first process) runs to the
    end; then the grader releases the reader, which carries on with the old row. A fresh
    ``get_dashboard`` must then return what the database has, and be a hit on the next call."""
    customer = _other_than_hot(ctx, 4)
    new_name = f"Renamed {secrets.token_hex(3)}"
    lock = (secrets.randbelow(2**31), secrets.randbelow(2**31))
    ctx.function("get_dashboard"), ctx.function("rename_customer")  # both load (else: their reason)
    get, rename = _submitted(ctx, "get"), _submitted(ctx, "rename", "rename_customer", timeout=RACE_TIMEOUT)
    prefix = _prefix()
    main, reader_process = _processes(ctx, 2)
    notes: list[str] = []
    try:
        _call_in(reader_process, driver=_driver("ready"), timeout=60)
        _redis(ctx).flushdb()
        with stack.connect(dsn=ctx.admin_dsn) as admin:
            admin.execute("SELECT pg_catalog.pg_advisory_lock(%s::int, %s::int)", lock)
            try:
                reader = _Background(lambda: _call_in(reader_process, customer, prefix, list(lock),
                                                        driver=_driver("parked_get"), timeout=RACE_TIMEOUT))
                deadline = time.monotonic() + PARK_TIMEOUT
                parked = None
                while parked is None and not reader.done and time.monotonic() < deadline:
                    parked = _parked_reader(admin, lock, ctx.role)
                    if parked is None:
                        time.sleep(0.02)
                if parked is None or caching.DASHBOARD_MARKER not in parked:
                    reader_error = reader.error if reader.done else None
                    if isinstance(reader_error, SubmissionError):
                        raise reader_error
                    return CheckResult.fail(
                        "the race could not be forced: on a cache miss get_dashboard() must query the database with "
                        "db.dashboard(customer_id) (the grader holds that reader inside its query) — "
                        + ("it returned without waiting there" if reader.done else
                           f"no such query was waiting after {PARK_TIMEOUT:g} s"))
                writer = _Background(lambda: rename(customer, new_name, prefix))
                writer.wait(WRITER_WAIT)
                if not writer.done:
                    notes.append(f"the writer was still waiting after {WRITER_WAIT:g} s (it waits for the parked "
                                 "reader?)")
            finally:
                admin.execute("SELECT pg_catalog.pg_advisory_unlock_all()")
        reader.wait(RACE_TIMEOUT)
        writer.wait(RACE_TIMEOUT)
        for step in (writer, reader):
            if not step.done:
                raise SubmissionError(f"get_dashboard()/rename_customer() did not return within {RACE_TIMEOUT:g} s "
                                      "of the forced race")
            if step.error is not None:
                raise step.error
        truth = _truth(ctx, customer)  # the grader's own read, after reader and writer have returned
        if truth["name"] != new_name:
            return CheckResult.fail("after rename_customer() returned, the database still has the old name: call "
                                    "db.rename(customer_id, name) (it commits)")
        after = get(customer, prefix)
        with _statements(ctx) as repeat:
            get(customer, prefix)
    finally:
        _stop(reader_process)
        with contextlib.suppress(Exception):
            ctx.call("submission", None, prefix, driver=_driver("close"), timeout=CALL_TIMEOUT)
    if repeat.count:
        return _no_cache_yet(customer, repeat.count)
    if after != truth:
        shown = after.get("name") if isinstance(after, dict) else after
        return CheckResult.fail(
            f"a reader that queried before the rename stored its value after rename_customer() had returned, "
            f"and the cache kept it: get_dashboard now returns {str(shown)[:80]!r}, the database has "
            f"{truth['name']!r}. Deleting the key is not enough: make the reader store only "
            "while it still holds a lease (SET NX PX token), checked and set atomically (a Lua script), and "
            "have rename_customer() revoke the lease" + "".join(f" ({note})" for note in notes))
    if notes:
        # e.g. the writer waited for the parked reader: correct, just slow — say so, but pass.
        return CheckResult.ok("no stale value after the forced race (" + "; ".join(notes) + ")")
    return CheckResult.ok("no stale value after the forced race: the old value was not stored")


class _Background:
    """``fn()`` in a grader thread: ``done``, ``value``, ``error`` (an exception it raised), ``wait(timeout)``."""

    def __init__(self, fn) -> None:
        self.value, self.error = None, None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self.value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the check
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)


# -- more sandbox processes: the race's reader, the herd ---------------------------

def _processes(ctx, count: int) -> list:
    """The submission's sandbox and ``count - 1`` more processes in the same jail (same user, limits,
    environment, role and Redis), each with the learner's answers loaded the same way."""
    from perflab.grading.sandbox import Sandbox

    main = ctx.sandbox("submission")
    extra = []
    for _ in range(count - 1):
        process = Sandbox(main.box, main.name, main.log_path)
        process._loads = list(main._loads)  # replayed into the process when it starts
        extra.append(process)
    return [main] + extra


def _stop(process) -> None:
    """End one extra herd process (closing its channel ends it), without touching the jail's others."""
    proc = process.proc
    if proc is None:
        return
    with contextlib.suppress(Exception):
        proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except Exception:  # noqa: BLE001 - it would not end: kill it (it is the sandbox user's, we are its parent)
        with contextlib.suppress(Exception):
            proc.kill()
            proc.wait(timeout=5)
    process.proc = None


def _in_parallel(processes, call) -> list:
    """``call(process)`` in one grader thread per process, all started together; results in order."""
    results: list = [None] * len(processes)

    def run(index, process):
        try:
            results[index] = ("ok", call(process))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the grader's thread below
            results[index] = ("error", exc)

    threads = [threading.Thread(target=run, args=(i, p), daemon=True) for i, p in enumerate(processes)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _call_in(process, *args, timeout: float, **kwargs):
    from perflab.grading.sandbox import SandboxCallError, SandboxError, SandboxTimeout

    try:
        return process.call("submission", "get_dashboard", *args, timeout=timeout, **kwargs)
    except SandboxCallError as exc:
        raise SubmissionError(f"get_dashboard() in another sandbox process raised {exc.type_name}: {exc.message}") from None
    except SandboxTimeout as exc:
        raise SubmissionError(f"get_dashboard() in another sandbox process {exc}") from None
    except SandboxError as exc:
        raise SubmissionError(f"get_dashboard() in another sandbox process: {exc}") from None


def _first_error(outcomes):
    for status, value in outcomes:
        if status == "error":
            raise value


def no_stampede(ctx) -> CheckResult:
    hot = _hot(ctx)
    ctx.function("get_dashboard")  # the learner's answer loads (else: its reason)
    per_process = CONCURRENT_MISSES // HERD_PROCESSES
    total = per_process * HERD_PROCESSES
    prefix = _prefix()
    old_name = _truth(ctx, hot)["name"]
    # A name nobody has seen: a value remembered from an earlier check (in Redis or in a process) is wrong now.
    herd_name = f"Herd {secrets.token_hex(4)}"
    processes = _processes(ctx, HERD_PROCESSES)
    try:
        _rename_as_grader(ctx, hot, herd_name)
        truth = _truth(ctx, hot)
        if truth["name"] != herd_name:
            return CheckResult.fail(f"the grader renamed customer {hot} to {herd_name!r} in your copy of the data, but "
                                    f"its dashboard still says {truth['name']!r}: the customers table was changed")
        _redis(ctx).flushdb()
        _first_error(_in_parallel(processes, lambda p: _call_in(
            p, hot, prefix, HERD_POOL_SIZE, driver=_driver("herd_prepare"), timeout=60)))
        start_at = time.time() + 0.5
        with _statements(ctx) as probe:
            outcomes = _in_parallel(processes, lambda p: _call_in(
                p, hot, prefix, per_process, HERD_POOL_SIZE, start_at, timeout=HERD_TIMEOUT,
                driver=_driver("herd")))
        _first_error(outcomes)
    finally:
        for process in processes[1:]:
            _stop(process)
        with contextlib.suppress(Exception):
            _rename_as_grader(ctx, hot, old_name)
        with contextlib.suppress(Exception):
            ctx.call("submission", None, prefix, driver=_driver("close"), timeout=CALL_TIMEOUT)
    herds = [value if isinstance(value, dict) else {} for _, value in outcomes]
    results = [result for herd in herds for result in (herd.get("results") or [])]
    errors = [error for herd in herds for error in (herd.get("errors") or [])]
    error_count = sum(int(herd.get("error_count") or 0) for herd in herds)
    p99 = max((herd["p99_ms"] for herd in herds if isinstance(herd.get("p99_ms"), (int, float))), default=None)
    queries, dashboards = probe.count, _dashboard_queries(probe)
    shown = f"{total} concurrent get_dashboard() calls ({HERD_PROCESSES} processes × {per_process} threads)"
    if error_count or errors:
        return CheckResult.fail(f"{max(error_count, len(errors))} of {shown} failed: {errors[0] if errors else '?'}")
    if len(results) != total:
        return CheckResult.fail(f"{shown} gave {len(results)} results instead of {total}")
    wrong = sum(value != truth for value in results)
    if wrong:
        return CheckResult.fail(f"{wrong} of {shown} returned a wrong value (the grader had just renamed the customer "
                                f"to {herd_name!r}: a value kept from before is stale)")
    if queries == 0:
        return CheckResult.fail(f"{shown} on an empty cache ran no statement at all on the server, yet the customer "
                                "had just been renamed: the values did not come from the database")
    if queries > MAX_STAMPEDE_QUERIES:
        return CheckResult.fail(
            f"{shown} on an empty cache made PostgreSQL run {_quantity(queries, 'statement', 'statements')} "
            f"({dashboards} identical dashboard queries; at most {MAX_STAMPEDE_QUERIES} allowed): a thundering herd. "
            "Let one caller take a lock in Redis (r.set(lock, token, nx=True, px=...)), shared by every process, and "
            "query; the others poll the key until it appears", p99_ms=p99)
    return CheckResult.ok(f"{shown} on an empty cache -> {_quantity(queries, 'statement', 'statements')} on the server"
                          + (f"; p99 {p99:.0f} ms" if p99 is not None else ""))


LAB = LabSpec(
    id="07",
    title="A cache that stays correct under load",
    solution="07_redis_caching.ipynb",
    cell_timeout=120,
    total_timeout=600,
    namespace=NAMESPACE,
    needs_redis=True,
    exercises=[
        Exercise("cache", "Cache-aside for the dashboard", None, ["get_dashboard"], [
            Check("correct values, and a hit runs no query", correct_values, 2),
            Check("a hit is much faster than the query", fast_hits, 1),
        ]),
        Exercise("invalidation", "Correct after writes", None, ["get_dashboard", "rename_customer"], [
            Check("read-your-writes after rename_customer()", read_your_writes, 1),
            Check("no stale value after a racing reader", no_stale_set, 2),
        ]),
        Exercise("stampede", "100 concurrent misses", None, ["get_dashboard"], [
            Check(f"at most {MAX_STAMPEDE_QUERIES} database queries for {CONCURRENT_MISSES} concurrent misses",
                  no_stampede, 2),
        ]),
    ],
)
