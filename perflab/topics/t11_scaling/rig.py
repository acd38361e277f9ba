"""Topic 11 · scaling out: what notebook 11 and lab 11 share — two nodes, a read workload, a write load,
replication lag sampled, read-your-writes trials, and the Universal Scalability Law fitted with its uncertainty.

    from perflab.topics.t11_scaling import rig
    nodes = rig.Nodes(lesson.dsn, replica.for_dsn(lesson.dsn))    # a small pool on each node
    rig.read_load([nodes.primary_dsn, nodes.replica_dsn], concurrency=4, seconds=1)   # throughput, latency, CPU
    rig.lag_under_writes(nodes, rate=200, seconds=3)                # lag in bytes and in time, sampled
    rig.ryw_trials(route, nodes, sessions=8, trials=10)             # stale reads of a session's own writes
    rig.compare_routers([naive, sticky], nodes, trials=10)          # the same for several routers, one progress line
    rig.fit_usl(points)                                             # sigma, kappa, lambda with bootstrap CIs

A router (the notebook's variants and the lab's answer) is ``route(session, sql, params=(), write=False)``:
``session`` is a dict that belongs to one user (the router keeps what it needs in it), reads return the rows,
writes return what the statement returned (or None). :class:`Node` counts the statements it ran, and each
node's server counts its own (``server_reads``), so where the reads went is never self-reported.
"""
from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from perflab import stack

# The read-mostly workload's query: a customer's recent orders with their item counts (an index scan on
# orders, a join on order_items: a few hundred microseconds of server work at every scale).
READ_SQL = """SELECT o.id, o.created_at, o.total, count(oi.id) AS items
FROM orders o JOIN order_items oi ON oi.order_id = o.id
WHERE o.customer_id = %s
GROUP BY o.id ORDER BY o.created_at DESC LIMIT 10"""
# Ordinary customers only (1 and 2 are the big tenants): each read does about the same work.
READ_CUSTOMERS = range(100, 2000)

# Read-your-writes: a user's profile, updated on the primary and read back.
PROFILES_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    user_id      int PRIMARY KEY,
    display_name text NOT NULL,
    version      int  NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS write_log (
    id      bigserial PRIMARY KEY,
    seq     bigint NOT NULL,
    payload text NOT NULL
);
CREATE TABLE IF NOT EXISTS heartbeat (id int PRIMARY KEY, seq bigint NOT NULL);
"""
UPDATE_NAME_SQL = "UPDATE profiles SET display_name = %s, version = version + 1 WHERE user_id = %s"
READ_NAME_SQL = "SELECT display_name FROM profiles WHERE user_id = %s"
LSN_AFTER_WRITE_SQL = "SELECT pg_current_wal_insert_lsn()::text"
REPLAYED_SQL = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"


def _namespace() -> dict:
    import psycopg

    return {"psycopg": psycopg, "time": time, "threading": threading,
            "UPDATE_NAME_SQL": UPDATE_NAME_SQL, "READ_NAME_SQL": READ_NAME_SQL}


# What lab 11's open_router may use without importing it (the lab says so): the grader re-creates the
# learner's function in its sandbox in a scope pre-filled with this (LabSpec(namespace=...)).
NAMESPACE = _namespace()


def setup_profiles(dsn: str, users: int) -> None:
    """(Re)create the lesson's own tables in a notebook's or the grader's copy: ``users`` profiles, version 0."""
    with stack.connect(dsn=dsn) as conn:
        conn.execute(PROFILES_SCHEMA)
        conn.execute("TRUNCATE profiles, write_log, heartbeat RESTART IDENTITY")
        conn.execute("INSERT INTO profiles (user_id, display_name) SELECT g, 'user ' || g FROM generate_series(1, %s) g",
                     (users,))
        conn.execute("INSERT INTO heartbeat VALUES (1, 0)")
        conn.execute("ANALYZE profiles")


# ------------------------------------------------------------------------------------------------
# Nodes: a pool on each server, with counts of what ran where
# ------------------------------------------------------------------------------------------------

class Node:
    """One server (primary or replica): a connection pool (autocommit) and a count of statements run on it."""

    def __init__(self, name: str, dsn: str, size: int = 8):
        from psycopg_pool import ConnectionPool

        self.name, self.dsn = name, dsn
        self.pool = ConnectionPool(dsn, min_size=1, max_size=size, kwargs={"autocommit": True}, open=True)
        self.pool.wait()
        self.statements = 0
        self._lock = threading.Lock()

    def run(self, sql: str, params=()) -> list | None:
        with self._lock:
            self.statements += 1
        with self.pool.connection() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else None

    def close(self) -> None:
        self.pool.close()


@dataclass
class Nodes:
    """The primary and the replica of one database (a notebook's copy or a grader's)."""

    primary_dsn: str
    replica_dsn: str
    size: int = 8
    primary: Node = field(init=False)
    replica: Node = field(init=False)

    def __post_init__(self):
        self.primary = Node("primary", self.primary_dsn, self.size)
        self.replica = Node("replica", self.replica_dsn, self.size)

    def reset_counts(self) -> None:
        self.primary.statements = self.replica.statements = 0

    def close(self) -> None:
        self.primary.close()
        self.replica.close()


def write_returning_lsn(node: Node, sql: str, params=()) -> tuple[list | None, str]:
    """Run a write on ``node`` (the primary) and return its result and the WAL position just after it.

    ``pg_current_wal_insert_lsn()`` on the same connection, after the commit: the end of what this
    session has inserted into the WAL, so at least the end of its commit record. (``pg_current_wal_lsn()``
    is the *write* position, which on a server with ``synchronous_commit = off`` can still be before it.)"""
    with node._lock:
        node.statements += 1
    with node.pool.connection() as conn:
        cur = conn.execute(sql, params)
        rows = cur.fetchall() if cur.description else None
        return rows, conn.execute(LSN_AFTER_WRITE_SQL).fetchone()[0]


def replica_has(node: Node, lsn: str, timeout: float = 0.0, poll: float = 0.001) -> bool:
    """Has the replica replayed ``lsn``? Polls for up to ``timeout`` seconds (0: ask once)."""
    deadline = time.monotonic() + timeout
    with node.pool.connection() as conn:
        while True:
            if conn.execute(REPLAYED_SQL, (lsn,)).fetchone()[0]:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)


def server_reads(dsn: str, table: str = "profiles") -> int:
    """Scans (sequential + index) of ``table`` as counted by the server that ``dsn`` points at (its own statistics)."""
    with stack.connect(dsn=dsn) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = %s", (table,)).fetchone()
        return int(row[0]) if row else 0


# ------------------------------------------------------------------------------------------------
# CPU per node: the postmaster and every backend it started (running or already exited)
# ------------------------------------------------------------------------------------------------

def server_cpu_seconds(pid: int | None) -> float:
    """CPU seconds used so far by the server whose postmaster is ``pid``: its own, its live children's, and
    (via the postmaster's children_* times) those of backends that have exited."""
    import psutil

    if not pid:
        return float("nan")
    try:
        root = psutil.Process(pid)
        t = root.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                c = child.cpu_times()
                total += c.user + c.system
        return total
    except psutil.Error:
        return float("nan")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every program, all cores), from ``psutil.cpu_times()``."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def client_cpu_seconds() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


@contextlib.contextmanager
def pinned(pid: int | None, cpus: list[int]):
    """Run the server of postmaster ``pid`` (and every backend it forks meanwhile) on ``cpus`` only; restore after."""
    import psutil

    procs = []
    if pid:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    before = {}
    try:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                before[proc] = proc.cpu_affinity()
                proc.cpu_affinity(cpus)
        yield
    finally:
        every = list(range(psutil.cpu_count()))
        survivors = [psutil.Process(pid)] if pid else []
        with contextlib.suppress(psutil.Error):
            survivors += psutil.Process(pid).children(recursive=True)
        for proc in survivors:
            with contextlib.suppress(psutil.Error):
                proc.cpu_affinity(before.get(proc, every))


def pinned_runs(placements: list[tuple[str, dict[str, list[int]], list[str]]], pids: dict[str, int], *,
                clients: int, seconds: float, rounds: int) -> dict[str, float]:
    """For each ``(label, {"primary": cpus, "replica": cpus}, dsns)``: the median reads/s of ``rounds``
    :func:`read_load` runs with each server pinned to its CPUs (a server not named: both CPUs), under one
    progress line. ``pids``: name -> postmaster pid."""
    from perflab import progress as tracking

    medians = {}
    with tracking.track(len(placements) * rounds, unit="runs", what="pinned read runs") as step:
        for label, placement, dsns in placements:
            runs = []
            for _ in range(rounds):
                step.update(detail=label)
                with pinned(pids["primary"], placement["primary"]), \
                        pinned(pids["replica"], placement.get("replica", [0, 1])):
                    runs.append(read_load(dsns, clients, seconds, pids=pids)["reads_per_s"])
                step.advance()
            medians[label] = float(np.median(runs))
    return medians


def can_pin() -> bool:
    import psutil

    return hasattr(psutil.Process(), "cpu_affinity") and (psutil.cpu_count() or 1) >= 2


# ------------------------------------------------------------------------------------------------
# Read throughput at a concurrency, on one node or spread over several
# ------------------------------------------------------------------------------------------------

def read_load(dsns: list[str], concurrency: int, seconds: float, *, pids: dict[str, int] | None = None,
              sql: str = READ_SQL, seed: int = 11) -> dict:
    """``concurrency`` client threads, each with one connection per node, send reads back to back for
    ``seconds``, rotating over the nodes (primary only: ``[dsn]``; primary + replica: ``[p, r]``).

    Returns reads per second, latency percentiles, and the CPU seconds each server (``pids``: name ->
    postmaster pid) and this client process used during the run."""
    import psycopg

    conns = [[psycopg.connect(dsn, autocommit=True) for dsn in dsns] for _ in range(concurrency)]
    for row in conns:
        for conn in row:
            conn.execute(sql, (READ_CUSTOMERS[0],)).fetchall()  # warm: plans cached, pages in memory
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    per_node = [[0] * len(dsns) for _ in range(concurrency)]
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        mine, lat, turn = conns[i], latencies[i], i
        start.wait()
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                return
            node = turn % len(mine)
            turn += 1
            mine[node].execute(sql, (rng.choice(READ_CUSTOMERS),)).fetchall()
            lat.append(time.perf_counter() - t0)
            per_node[i][node] += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    pids = pids or {}
    cpu0 = {name: server_cpu_seconds(pid) for name, pid in pids.items()}
    client0, machine0 = client_cpu_seconds(), machine_busy_seconds()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start.wait()
    from perflab import progress as tracking

    with tracking.track_seconds(seconds, what=f"reads from {concurrency} clients") as tick:
        while any(t.is_alive() for t in threads):
            threads[0].join(0.1)
            tick()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    cpu = {name: server_cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
    client_cpu = client_cpu_seconds() - client0
    machine_cpu = machine_busy_seconds() - machine0
    for row in conns:
        for conn in row:
            conn.close()
    all_lat = np.array([x for lat in latencies for x in lat]) * 1000
    reads = len(all_lat)
    return {"concurrency": concurrency, "nodes": len(dsns), "reads": reads, "seconds": wall,
            "reads_per_s": reads / wall, "p50_ms": float(np.percentile(all_lat, 50)) if reads else math.nan,
            "p99_ms": float(np.percentile(all_lat, 99)) if reads else math.nan,
            "per_node": [sum(col) for col in zip(*per_node)],
            **{f"cpu_{name}_s": value for name, value in cpu.items()}, "cpu_client_s": client_cpu,
            "cpu_machine_s": machine_cpu}


def concurrency_sweep(configs: dict[str, list[str]], levels: list[int], seconds: float, rounds: int,
                      pids: dict[str, int] | None = None):
    """Every (config, concurrency) measured ``rounds`` times, in a shuffled order per round (so a busy
    moment on the machine spreads over all points instead of landing on one). Returns a DataFrame."""
    import pandas as pd

    from perflab import progress as tracking

    rows = []
    rng = random.Random(2024)
    points = [(name, n) for name in configs for n in levels]
    with tracking.track(rounds * len(points), unit="points", what="read sweep") as step:
        for r in range(rounds):
            plan = list(points)
            rng.shuffle(plan)
            for name, n in plan:
                step.update(detail=f"{name}, {n} clients")
                rows.append({"config": name, "round": r, **read_load(configs[name], n, seconds, pids=pids)})
                step.advance()
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Replication lag under a steady write load
# ------------------------------------------------------------------------------------------------

def lag_under_writes(primary_dsn: str, replica_dsn: str, *, rate: float, seconds: float, sample_every: float = 0.02,
                     payload_bytes: int = 300, synchronous_commit: str = "off",
                     burst_rows: int = 0, pids: dict[str, int] | None = None) -> "pd.DataFrame":
    """Write ``rate`` small transactions per second on the primary for ``seconds`` while sampling, every
    ``sample_every`` s, how far behind the replica is:

    * ``lag_bytes``: ``pg_current_wal_lsn()`` on the primary minus ``pg_last_wal_replay_lsn()`` on the replica;
    * ``lag_ms``: how long ago the oldest write the replica does not show yet was committed on the primary
      (0 when it shows them all): the staleness a reader of the replica sees, timed by one clock.

    ``burst_rows`` > 0 adds one bulk insert of that many rows half-way through. With ``pids`` (name ->
    postmaster pid), the CPU seconds each server used during the run are in ``frame.attrs["cpu_s"]``."""
    import pandas as pd
    import psycopg

    writer = psycopg.connect(primary_dsn, autocommit=True, options=f"-c synchronous_commit={synchronous_commit}")
    p_probe = psycopg.connect(primary_dsn, autocommit=True)
    r_probe = psycopg.connect(replica_dsn, autocommit=True)
    base_seq = writer.execute("SELECT seq FROM heartbeat WHERE id = 1").fetchone()[0]
    committed: dict[int, float] = {}
    payload = "x" * payload_bytes
    stop = threading.Event()
    began = time.perf_counter()

    def write_loop() -> None:
        seq, burst_done = base_seq, burst_rows <= 0
        while not stop.is_set():
            due = began + (seq - base_seq) / rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            seq += 1
            with writer.transaction():
                writer.execute("INSERT INTO write_log (seq, payload) VALUES (%s, %s)", (seq, payload))
                writer.execute("UPDATE heartbeat SET seq = %s WHERE id = 1", (seq,))
            committed[seq] = time.perf_counter()
            if not burst_done and time.perf_counter() - began > seconds / 2:
                writer.execute("INSERT INTO write_log (seq, payload) SELECT %s, repeat('b', %s) "
                               "FROM generate_series(1, %s)", (seq, payload_bytes, burst_rows))
                burst_done = True

    cpu0 = {name: server_cpu_seconds(pid) for name, pid in (pids or {}).items()}
    thread = threading.Thread(target=write_loop, daemon=True)
    thread.start()
    rows = []
    from perflab import progress as tracking

    with tracking.track_seconds(seconds, what=f"{rate:g} writes/s, lag sampled") as tick:
        try:
            while time.perf_counter() - began < seconds:
                t = time.perf_counter()
                tick()
                primary_lsn = p_probe.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
                visible, behind = r_probe.execute(
                    "SELECT (SELECT seq FROM heartbeat WHERE id = 1), pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())",
                    (primary_lsn,)).fetchone()
                oldest_missing = committed.get((visible or base_seq) + 1)
                lag = max(0.0, t - oldest_missing) if oldest_missing is not None and oldest_missing <= t else 0.0
                rows.append({"t_s": t - began, "lag_bytes": max(0, int(behind or 0)), "lag_ms": lag * 1000,
                             "written": len(committed), "visible": (visible or base_seq) - base_seq})
                time.sleep(max(0.0, sample_every - (time.perf_counter() - t)))
        finally:
            stop.set()
            thread.join(5)
            for conn in (writer, p_probe, r_probe):
                conn.close()
    wall = time.perf_counter() - began
    frame = pd.DataFrame(rows)
    frame.attrs.update(rate=rate, writes=len(committed), seconds=seconds, synchronous_commit=synchronous_commit,
                       cpu_s={name: server_cpu_seconds(pid) - cpu0[name] for name, pid in (pids or {}).items()},
                       wall_s=wall)
    return frame


def lag_summary(frame) -> dict:
    return {"writes/s": round(frame.attrs["writes"] / frame.attrs["seconds"]),
            "samples": len(frame),
            "median lag ms": round(float(frame.lag_ms.median()), 1),
            "p95 lag ms": round(float(frame.lag_ms.quantile(0.95)), 1),
            "max lag ms": round(float(frame.lag_ms.max()), 1),
            "median lag bytes": int(frame.lag_bytes.median()),
            "max lag bytes": int(frame.lag_bytes.max())}


# ------------------------------------------------------------------------------------------------
# Read-your-writes: a session writes its own row, then reads it back through a router
# ------------------------------------------------------------------------------------------------

def ryw_trials(route: Callable, nodes: Nodes | None = None, *, sessions: int = 8, trials: int = 10,
               read_after_ms: tuple[float, ...] = (0,), reads_per_write: int = 1, think_ms: float = 0.0,
               users_offset: int = 0, tag: str = "", timeout: float = 30.0) -> dict:
    """``sessions`` users in parallel threads; each, ``trials`` times: set its display name to a new value
    through ``route(..., write=True)``, wait ``read_after_ms`` (cycled), read it back ``reads_per_write`` times
    (``think_ms`` apart) through ``route``. A read that returns any other name than the one just written is
    **stale**. ``tag`` makes the names of one run unique (a leftover from another run is stale too).

    Counted here (never by the router): stale reads, read latency (p50/p99/mean), the wall time and, with
    ``nodes``, the reads per node (statements each :class:`Node` ran while routing)."""
    if nodes is not None:
        nodes.reset_counts()
    stale = [0] * sessions
    reads = [0] * sessions
    by_delay = {d: [0, 0] for d in read_after_ms}  # delay -> [reads, stale]
    delay_lock = threading.Lock()
    read_lat: list[list[float]] = [[] for _ in range(sessions)]
    errors: list[BaseException] = []
    start = threading.Barrier(sessions + 1)

    def user(i: int) -> None:
        user_id = users_offset + i + 1
        session: dict = {}
        start.wait()
        try:
            for k in range(trials):
                name = f"user {user_id} v{k + 1}{tag}"
                route(session, UPDATE_NAME_SQL, (name, user_id), write=True)
                delay = read_after_ms[(i + k) % len(read_after_ms)]
                if delay:
                    time.sleep(delay / 1000)
                for r in range(reads_per_write):
                    if r and think_ms:
                        time.sleep(think_ms / 1000)
                    t0 = time.perf_counter()
                    rows = route(session, READ_NAME_SQL, (user_id,))
                    read_lat[i].append(time.perf_counter() - t0)
                    reads[i] += 1
                    got = rows[0][0] if rows else None
                    with delay_lock:
                        by_delay[delay][0] += 1
                        by_delay[delay][1] += got != name
                    if got != name:
                        stale[i] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(sessions)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    start.wait()
    for t in threads:
        t.join(max(0.1, timeout - (time.perf_counter() - began)))
    wall = time.perf_counter() - began
    lat = np.array([x for row in read_lat for x in row]) * 1000
    total = sum(reads)
    writes = sessions * trials
    counts = {}
    if nodes is not None:
        counts = {"reads on replica": nodes.replica.statements,
                  "replica share %": 100 * nodes.replica.statements / total if total else math.nan,
                  "reads on primary": nodes.primary.statements - writes}
    return {"reads": total, "writes": writes, "stale reads": sum(stale),
            "stale %": 100 * sum(stale) / total if total else math.nan, **counts,
            "read p50 ms": float(np.percentile(lat, 50)) if total else math.nan,
            "read p99 ms": float(np.percentile(lat, 99)) if total else math.nan,
            "read mean ms": float(lat.mean()) if total else math.nan,
            "wall s": wall, "stale by delay": {d: f"{s}/{n}" for d, (n, s) in by_delay.items()},
            "errors": errors, "unfinished": sum(t.is_alive() for t in threads)}


def compare_routers(routers: list[Callable], nodes: Nodes, *, sessions: int = 8, trials: int = 10,
                    read_after_ms: tuple[float, ...] = (0,)) -> tuple[dict, dict]:
    """:func:`ryw_trials` for every router in turn, each with its own ``sessions`` users (so no router reads
    a row another one wrote), under one progress line. Returns ``(results, stale_by_delay)``, both keyed
    by the router's docstring; a router that raised stops the comparison with its error."""
    from perflab import progress as tracking

    results, by_delay = {}, {}
    with tracking.track(len(routers), unit="routers", what="read-your-writes") as step:
        for offset, route in enumerate(routers):
            step.update(detail=route.__doc__)
            result = ryw_trials(route, nodes, sessions=sessions, trials=trials, read_after_ms=read_after_ms,
                                users_offset=sessions * offset)
            if result["errors"]:
                raise RuntimeError(f"router {route.__doc__!r} raised: {result['errors'][0]!r}") from result["errors"][0]
            results[route.__doc__] = {k: v for k, v in result.items() if k not in ("errors", "unfinished", "writes")}
            by_delay[route.__doc__] = result["stale by delay"]
            step.advance()
    return results, by_delay


# ------------------------------------------------------------------------------------------------
# The Universal Scalability Law, fitted with a bootstrap
# ------------------------------------------------------------------------------------------------

def usl(n, lam: float, sigma: float, kappa: float):
    """Gunther's USL: throughput at concurrency n = lam·n / (1 + sigma·(n−1) + kappa·n·(n−1))."""
    n = np.asarray(n, dtype=float)
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def _fit_once(n: np.ndarray, x: np.ndarray) -> tuple[float, float, float]:
    """Least squares on the USL's linear form n/X = a + b·(n−1) + c·n·(n−1) (a = 1/lam, sigma = b/a,
    kappa = c/a), weighted so each point counts by its relative error; negative coefficients are set to 0
    and the rest refitted (contention and coherency cannot be negative)."""
    y = n / x
    columns = {"a": np.ones_like(n), "b": n - 1, "c": n * (n - 1)}
    active = ["a", "b", "c"]
    while True:
        design = np.column_stack([columns[k] for k in active]) / y[:, None]
        coef, *_ = np.linalg.lstsq(design, np.ones_like(y), rcond=None)
        values = dict(zip(active, coef))
        negative = [k for k in active if k != "a" and values[k] < 0]
        if not negative:
            break
        active.remove(negative[0])
    a = values["a"]
    return 1 / a, values.get("b", 0.0) / a, values.get("c", 0.0) / a


@dataclass
class USLFit:
    lam: float
    sigma: float
    kappa: float
    samples: np.ndarray  # bootstrap (lam, sigma, kappa) rows
    n: np.ndarray
    x: np.ndarray

    def ci(self, values: np.ndarray) -> tuple[float, float]:
        return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))

    @property
    def sigma_ci(self):
        return self.ci(self.samples[:, 1])

    @property
    def kappa_ci(self):
        return self.ci(self.samples[:, 2])

    @staticmethod
    def _peak(lam, sigma, kappa, n_max=4096):
        """Where throughput peaks (sqrt((1−sigma)/kappa)), and the peak; kappa = 0: no peak below n_max."""
        n_star = math.sqrt((1 - sigma) / kappa) if kappa > 0 and sigma < 1 else n_max
        n_star = min(n_star, n_max)
        return n_star, float(usl(n_star, lam, sigma, kappa))

    @property
    def peak(self) -> tuple[float, float]:
        return self._peak(self.lam, self.sigma, self.kappa)

    def peak_ci(self) -> tuple[tuple[float, float], tuple[float, float]]:
        peaks = np.array([self._peak(*row) for row in self.samples])
        return self.ci(peaks[:, 0]), self.ci(peaks[:, 1])

    def predict(self, n) -> np.ndarray:
        return usl(n, self.lam, self.sigma, self.kappa)

    def predict_band(self, n) -> tuple[np.ndarray, np.ndarray]:
        curves = np.array([usl(n, *row) for row in self.samples])
        return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)

    def capacity_projection(self, k: int, replay_share: float = 0.0) -> tuple[float, tuple[float, float]]:
        """Peak reads per second of a primary and ``k − 1`` replicas, each a machine like this one at its own
        peak, when each replica spends ``replay_share`` of its capacity replaying the primary's writes:
        X_max·(1 + (k−1)(1 − replay_share)). Reads only, perfect routing; the bootstrap's 95% interval."""
        factor = 1 + (k - 1) * (1 - replay_share)
        peaks = np.array([self._peak(*row)[1] for row in self.samples])
        return factor * self.peak[1], self.ci(factor * peaks)

    def nodes_projection(self, k: int, n_total) -> tuple[float, tuple[float, float]]:
        """Reads per second of ``k`` nodes, each a machine like this one running the same workload, with
        ``n_total`` clients spread evenly: k·X(n/k). Assumes reads only, perfect routing, and no replication
        cost: an upper bound, with the bootstrap's 95% interval."""
        value = float(k * self.predict(n_total / k))
        band = [k * float(usl(n_total / k, *row)) for row in self.samples]
        return value, self.ci(np.array(band))


def fit_usl(n, x, *, resamples: int = 500, seed: int = 11) -> USLFit:
    """Fit the USL to measured (concurrency, throughput) points, with a bootstrap over the points
    (resampled within each concurrency, so every level stays in each refit)."""
    n = np.asarray(n, dtype=float)
    x = np.asarray(x, dtype=float)
    lam, sigma, kappa = _fit_once(n, x)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(n == level) for level in np.unique(n)]
    samples = []
    for _ in range(resamples):
        pick = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        samples.append(_fit_once(n[pick], x[pick]))
    return USLFit(lam, sigma, kappa, np.array(samples), n, x)


# ------------------------------------------------------------------------------------------------
# Plots this topic needs beyond perflab.plots
# ------------------------------------------------------------------------------------------------

def _figure(width=10, height=4.2, cols=2):
    import matplotlib

    from perflab import plots

    with matplotlib.rc_context(plots.COURSE_STYLE):
        fig = plots.CourseFigure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(1, cols)
    return fig, axes


def plot_read_scaling(frame, title: str = "Reads: one node vs two nodes on the same 2 cores", save: str | None = None):
    """Throughput and p99 latency vs concurrency, one line per configuration (medians, min–max bars)."""
    import matplotlib

    from perflab import plots

    with matplotlib.rc_context(plots.COURSE_STYLE):
        fig, (left, right) = _figure()
        colors = plots.variant_colors(list(frame.config.unique()))
        for name, group in frame.groupby("config", sort=False):
            stats = group.groupby("concurrency").agg(x=("reads_per_s", "median"), lo=("reads_per_s", "min"),
                                                     hi=("reads_per_s", "max"), p99=("p99_ms", "median"))
            left.errorbar(stats.index, stats.x, yerr=[stats.x - stats.lo, stats.hi - stats.x], marker="o",
                          lw=2, capsize=3, label=name, color=colors[name])
            right.plot(stats.index, stats.p99, marker="o", lw=2, label=name, color=colors[name])
        left.set(xlabel="concurrent clients", ylabel="reads per second", title="Read throughput")
        right.set(xlabel="concurrent clients", ylabel="p99 latency, ms", title="Read latency (p99)")
        for ax in (left, right):
            ax.set_xscale("log", base=2)
            ax.legend()
        fig.suptitle(title, x=0.01, ha="left", fontweight="bold")
        if save:
            plots.save(fig, save)
    return fig


def plot_lag(frames: dict, save: str | None = None):
    """Lag in time and in bytes over the run, one line per scenario."""
    import matplotlib

    from perflab import plots

    with matplotlib.rc_context(plots.COURSE_STYLE):
        fig, (left, right) = _figure()
        colors = plots.variant_colors(list(frames))
        for name, frame in frames.items():
            left.plot(frame.t_s, frame.lag_ms, lw=1.5, label=name, color=colors[name])
            right.plot(frame.t_s, frame.lag_bytes.clip(lower=1), lw=1.5, label=name, color=colors[name])
        left.set(xlabel="seconds into the run", ylabel="staleness on the replica, ms", title="Lag in time")
        right.set(xlabel="seconds into the run", ylabel="WAL not yet replayed, bytes (log)", title="Lag in bytes",
                  yscale="log")
        left.legend()
        if save:
            plots.save(fig, save)
    return fig


def plot_usl(fit: USLFit, *, measured_label: str = "one node, measured", extra: dict | None = None,
             save: str | None = None):
    """Measured throughput points, the fitted USL with its bootstrap band, and optional extra points."""
    import matplotlib

    from perflab import plots

    with matplotlib.rc_context(plots.COURSE_STYLE):
        fig, ax = _figure(width=8, height=4.4, cols=1)
        grid = np.linspace(1, max(fit.n.max() * 2, 32), 200)
        low, high = fit.predict_band(grid)
        ax.fill_between(grid, low, high, color="#0072B2", alpha=0.15, label="USL fit, 95% bootstrap band")
        ax.plot(grid, fit.predict(grid), color="#0072B2", lw=2,
                label=f"USL: σ={fit.sigma:.3f}, κ={fit.kappa:.4f}, λ={fit.lam:,.0f}/s")
        ax.scatter(fit.n, fit.x, color="#D55E00", zorder=3, label=measured_label)
        for label, (n, x) in (extra or {}).items():
            ax.scatter(n, x, marker="s", s=50, zorder=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="concurrent clients", ylabel="reads per second",
               title="Throughput vs concurrency: measured points and the Universal Scalability Law")
        ax.legend(loc="lower right")
        if save:
            plots.save(fig, save)
    return fig
