"""What lab 08 (moving slow work to Celery) shares between its notebook and its grader.

    from perflab.topics.t08_offload import offload
    offload.reset(dsn)                                           # the lab's tables, emptied
    with offload.submission_worker(process_order_once, WORKER_SETTINGS, dsn) as w:
        w.client.send_task(offload.TASK_NAME, args=["order-1"])  # runs in a real `celery worker`
    offload.kill_worker_mid_run(process_order_once, WORKER_SETTINGS, dsn)   # kill -9, then count
    offload.kill_pool_process(process_order_once, WORKER_SETTINGS, dsn)     # one pool child killed
    offload.submit_duplicates(process_order_once, WORKER_SETTINGS, dsn)     # a double click
    offload.endpoint_under_load(create_order, process_order_once, dsn)      # inline vs yours, open loop

Everything is real. A learner's task body (a plain function ``fn(conn, order_id)``) is written, as
its source, into a throwaway module that builds a Celery app from the stack's Redis plus the
learner's settings (a dict of Celery settings) and registers the function as the task
:data:`TASK_NAME`; :func:`perflab.stack.celery_worker` runs that module in its own process. Each
experiment uses its own queue and Redis key prefix and deletes its keys afterwards.

What the experiments count is counted in the database, not by the learner's code:

* ``order_emails`` — one row per confirmation email sent (the effect a customer sees twice);
* ``order_reports`` — the saved report (one per completed order; primary key ``order_id``);
* ``order_runs`` — written by the task wrapper around the learner's function: one row per
  execution (pid, start, end, error), which is how a run cut short by ``kill -9`` is seen.

``email_claims (order_id PRIMARY KEY)`` is there for the learner's dedupe key.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import secrets
import signal
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

__all__ = [
    "TASK_NAME", "WORK_S", "SCHEMA", "ensure_schema", "reset", "send_confirmation_email", "build_report",
    "worker_app", "register", "submission_worker", "make_app", "reference_create_order",
    "reference_process_order_once", "REFERENCE_SETTINGS", "endpoint_under_load", "one_order",
    "kill_worker_mid_run", "kill_pool_process", "submit_duplicates",
]

TASK_NAME = "lab08.process_order"
# The slow part of the job (the article's ~2.5 s of report work, scaled down like the lesson's).
WORK_S = float(os.environ.get("PERFLAB_LAB08_WORK_SECONDS", "0.25"))
# How long an experiment waits, after a kill, for jobs to come back before calling them lost.
REDELIVERY_WAIT_S = 10.0
KOMBU_VISIBILITY_TIMEOUT_S = 3600  # the Redis transport's default
POOL_VISIBILITY_TIMEOUT_S = 60  # in the pool-process experiment: longer than the wait (see kill_pool_process)
SETTINGS_ENV = "PERFLAB_LAB08_SETTINGS"
KEY_PREFIX = "perflab:lab08:"

SCHEMA = """
CREATE TABLE IF NOT EXISTS order_emails (id bigserial PRIMARY KEY, order_id text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS email_claims (order_id text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS order_reports (order_id text PRIMARY KEY, body text NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS order_runs (id bigserial PRIMARY KEY, order_id text NOT NULL, pid int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz, error text);
"""


def ensure_schema(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


def reset(dsn: str) -> None:
    """Create the lab's tables if needed and empty them."""
    from perflab import datasets

    datasets.create_and_empty(dsn, SCHEMA, "order_emails, email_claims, order_reports, order_runs")


# ------------------------------------------------------------------------------------------------
# What a task body may call
# ------------------------------------------------------------------------------------------------

def send_confirmation_email(conn, order_id: str) -> None:
    """Send the customer's confirmation email (here: one row in ``order_emails``, per call).

    Inside ``with conn.transaction():`` it commits or rolls back with the rest of the block."""
    conn.execute("INSERT INTO order_emails (order_id) VALUES (%s)", (order_id,))


def build_report(order_id: str) -> str:
    """The slow part of the job: ``WORK_S`` seconds of report building. Returns the report's text."""
    time.sleep(WORK_S)
    return f"report for order {order_id}"


# ------------------------------------------------------------------------------------------------
# The reference answers (the grader's baseline, and what the lab's solution writes)
# ------------------------------------------------------------------------------------------------

REFERENCE_SETTINGS = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "broker_transport_options": {"visibility_timeout": 4},
}


def reference_process_order_once(conn, order_id):
    with conn.transaction():
        claimed = conn.execute("INSERT INTO email_claims (order_id) VALUES (%s) ON CONFLICT DO NOTHING "
                               "RETURNING order_id", (order_id,)).fetchone()
        if claimed is not None:
            send_confirmation_email(conn, order_id)
    report = build_report(order_id)
    conn.execute("INSERT INTO order_reports (order_id, body) VALUES (%s, %s) ON CONFLICT (order_id) DO NOTHING",
                 (order_id, report))
    return {"order_id": order_id}


def reference_create_order(conn, celery_app, order_id):
    """The inline baseline: the whole job while the client waits."""
    reference_process_order_once(conn, order_id)
    return 200, {"order_id": order_id, "status": "done"}


# ------------------------------------------------------------------------------------------------
# The worker side: a Celery app from the stack's Redis + the learner's settings
# ------------------------------------------------------------------------------------------------

# Settings the experiment owns: where the broker is, which queue, how keys are namespaced.
GRADER_OWNED = frozenset({"broker_url", "result_backend", "task_default_queue", "task_queues", "task_routes",
                          "imports", "include", "worker_concurrency", "worker_pool", "broker_connection_retry_on_startup"})


def _base_config(broker: str, queue: str, prefix: str) -> dict:
    return {
        "broker_url": broker,
        "result_backend": broker,
        "task_default_queue": queue,
        "result_backend_transport_options": {"global_keyprefix": prefix},
        "worker_prefetch_multiplier": 1,
        "result_expires": 600,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
    }


def _transport_options(prefix: str, learner: dict | None = None) -> dict:
    options = dict(learner or {})
    options.update({
        "global_keyprefix": prefix,
        # Look for abandoned messages every second (kombu's defaults: every 10 s, throttled x10), so
        # a redelivery comes visibility_timeout after a crash, not minutes later. The visibility
        # timeout itself is the learner's (kombu's default: one hour).
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 10,
    })
    return options


def check_settings(settings: Any) -> list[str]:
    """Problems with a learner's Celery settings dict (empty when it is usable)."""
    from celery.app import defaults

    if not isinstance(settings, dict):
        return [f"WORKER_SETTINGS should be a dict of Celery settings, not a {type(settings).__name__}"]
    known = {key for key, _ in defaults.flatten(defaults.NAMESPACES)}
    problems = []
    for key, value in settings.items():
        if key in known:
            if key == "broker_transport_options" and not isinstance(value, dict):
                problems.append("broker_transport_options should be a dict, e.g. {'visibility_timeout': 5}")
            continue
        if key == "visibility_timeout":
            problems.append("visibility_timeout is an option of the Redis transport, not a Celery setting: "
                            "put it in broker_transport_options={'visibility_timeout': seconds}")
            continue
        try:
            found = defaults.find(key)
            hint = f"; did you mean {found.namespace + '_' if found.namespace else ''}{found.key}?"
        except KeyError:
            hint = ""
        problems.append(f"{key!r} is not a Celery setting (lowercase names, e.g. task_acks_late){hint}")
    return problems


def visibility_timeout(settings: dict) -> float | None:
    options = settings.get("broker_transport_options") or {}
    value = options.get("visibility_timeout") if isinstance(options, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def worker_app():
    """The Celery app of a generated task module, configured from the worker's environment."""
    from celery import Celery

    env = os.environ
    prefix = env.get("PERFLAB_CELERY_PREFIX", KEY_PREFIX)
    learner = json.loads(env.get(SETTINGS_ENV) or "{}")
    config = _base_config(env["PERFLAB_CELERY_BROKER"], env["PERFLAB_CELERY_QUEUE"], prefix)
    config.update({k: v for k, v in learner.items() if k not in GRADER_OWNED})
    config["broker_transport_options"] = _transport_options(prefix, learner.get("broker_transport_options"))
    app = Celery("perflab.lab08.submission")
    app.conf.update(config)
    return app


_local = threading.local()


def _conn():
    """One connection per worker thread (or pool process), to the database named by PERFLAB_JOBS_DSN."""
    import psycopg

    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or getattr(_local, "pid", None) != os.getpid():
        conn = psycopg.connect(os.environ["PERFLAB_JOBS_DSN"], autocommit=True)
        _local.conn, _local.pid = conn, os.getpid()
    return conn


def run_job(fn: Callable, order_id: str) -> Any:
    """Run the learner's ``fn(conn, order_id)`` and log the run (pid, start, end, error) in order_runs."""
    conn = _conn()
    run_id = conn.execute("INSERT INTO order_runs (order_id, pid) VALUES (%s, %s) RETURNING id",
                          (order_id, os.getpid())).fetchone()[0]
    try:
        value = fn(conn, order_id)
    except BaseException as exc:
        if conn.info.transaction_status != 0:  # a failed explicit transaction: leave it first
            with contextlib.suppress(Exception):
                conn.rollback()
        conn.execute("UPDATE order_runs SET finished_at = clock_timestamp(), error = %s WHERE id = %s",
                     (f"{type(exc).__name__}: {exc}"[:500], run_id))
        raise
    conn.execute("UPDATE order_runs SET finished_at = clock_timestamp() WHERE id = %s", (run_id,))
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        value = repr(value)
    return value


def register(app, fn: Callable):
    """Register ``fn(conn, order_id)`` on ``app`` as the task :data:`TASK_NAME`."""

    @app.task(name=TASK_NAME)
    def process_order(order_id):
        return run_job(fn, order_id)

    return process_order


_MODULE_TEMPLATE = '''"""Written by perflab.topics.t08_offload.offload for one experiment: the learner's task body as a Celery task."""
from perflab.topics.t08_offload.offload import TASK_NAME, WORK_S, send_confirmation_email, build_report  # noqa: F401
from perflab.topics.t08_offload import offload as _perflab_offload
import json, os, time, secrets  # noqa: F401,E401

app = _perflab_offload.worker_app()

{source}

_perflab_offload.register(app, {name})
'''


def _source_of(fn: Callable | str) -> tuple[str, str]:
    if isinstance(fn, str):
        import ast

        tree = ast.parse(fn)
        names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        if not names:
            raise ValueError("the task body's source defines no function")
        return textwrap.dedent(fn), names[-1]
    return textwrap.dedent(inspect.getsource(fn)), fn.__name__


@dataclass
class SubmissionWorker:
    worker: Any  # stack.CeleryWorker
    client: Any  # a Celery app that sends to the worker's queue
    queue: str
    prefix: str
    dsn: str
    settings: dict
    module: str = ""
    env: dict = field(default_factory=dict)
    names: list = field(default_factory=list)  # every worker started for this experiment

    def another(self, label: str = "restart", **kwargs):
        """A fresh worker process on the same queue and broker keys (like a supervisor restarting it)."""
        from perflab import stack

        kwargs.setdefault("concurrency", self.worker.concurrency)
        name = f"lab08-{label}-{secrets.token_hex(3)}"
        self.names.append(name)
        return stack.celery_worker(self.module, queue=self.queue, prefix=self.prefix, env=self.env, name=name,
                                   **kwargs)

    def unacked(self, r) -> int:
        return int(r.hlen(self.prefix + "unacked"))

    def queued(self, r) -> int:
        return int(r.llen(self.prefix + self.queue))


def _client(broker: str, queue: str, prefix: str):
    from celery import Celery

    app = Celery("perflab.lab08.client")
    config = _base_config(broker, queue, prefix)
    config["broker_transport_options"] = {"global_keyprefix": prefix}
    app.conf.update(config)
    return app


@contextlib.contextmanager
def task_module(fn: Callable | str) -> Iterator[tuple[str, str]]:
    """Write the task body into a throwaway module; yield (module name, folder for PYTHONPATH)."""
    source, name = _source_of(fn)
    with tempfile.TemporaryDirectory(prefix="perflab-lab08-") as folder:
        module = f"lab08_submission_{secrets.token_hex(4)}"
        Path(folder, f"{module}.py").write_text(_MODULE_TEMPLATE.format(source=source, name=name))
        yield module, folder


def _worker_env(folder: str, dsn: str, settings: dict) -> dict:
    from perflab import paths

    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [folder, str(paths.ROOT), os.environ.get("PYTHONPATH")])),
        "PERFLAB_JOBS_DSN": dsn,
        "PERFLAB_LAB08_WORK_SECONDS": str(WORK_S),
        SETTINGS_ENV: json.dumps(settings),
    }


@contextlib.contextmanager
def submission_worker(fn: Callable | str, settings: dict, dsn: str, *, concurrency: int = 4,
                      pool: str = "threads", label: str = "w") -> Iterator[SubmissionWorker]:
    """A real worker running ``fn`` as the task :data:`TASK_NAME`, with ``settings`` applied; stopped
    (and its Redis keys deleted) when the block ends."""
    from perflab import stack

    running = stack.ensure()
    prefix = f"{KEY_PREFIX}{secrets.token_hex(4)}:"
    queue = f"lab08-{label}-{secrets.token_hex(3)}"
    with task_module(fn) as (module, folder):
        env = _worker_env(folder, dsn, settings)
        name = f"lab08-{label}-{secrets.token_hex(3)}"
        names = [name]
        try:
            with stack.celery_worker(module, queue=queue, prefix=prefix, concurrency=concurrency, pool=pool,
                                     env=env, name=name) as worker:
                yield SubmissionWorker(worker, _client(running.redis_url, queue, prefix), queue, prefix, dsn,
                                       settings, module, env, names)
        except BaseException:
            raise  # the workers' logs stay in .perflab/celery/, to be read
        else:
            for started in names:  # the experiment went as planned: its workers' logs are not needed
                for suffix in (".log", ".out"):
                    (worker.log_file.parent / f"{started}{suffix}").unlink(missing_ok=True)
        finally:
            _delete_keys(stack.redis_client(running.redis_url), prefix)


def _delete_keys(r, prefix: str) -> None:
    with contextlib.suppress(Exception):
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()


# ------------------------------------------------------------------------------------------------
# The web side: POST /orders/{id} calls the handler; GET /tasks/{id} reports a task's state
# ------------------------------------------------------------------------------------------------

def make_app(create_order: Callable, *, client, dsn: str, web_threads: int = 4):
    """An aiohttp app whose ``POST /orders/{order_id}`` calls ``create_order(conn, client, order_id)``
    on one of ``web_threads`` threads (a web server's worker threads) and answers with the
    ``(status, body)`` it returns; ``GET /tasks/{task_id}`` gives the task's state."""
    import asyncio

    import psycopg
    from aiohttp import web

    executor = ThreadPoolExecutor(web_threads, thread_name_prefix="lab08-web")
    local = threading.local()
    opened: list = []

    def handle(order_id: str):
        conn = getattr(local, "conn", None)
        if conn is None or conn.closed:
            conn = local.conn = psycopg.connect(dsn, autocommit=True)
            opened.append(conn)
        return create_order(conn, client, order_id)

    async def post_order(request):
        order_id = request.match_info["order_id"]
        try:
            status, body = await asyncio.get_running_loop().run_in_executor(executor, handle, order_id)
        except Exception as exc:  # noqa: BLE001 - the handler's error is the answer
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)
        return web.json_response(body, status=int(status))

    async def task_status(request):
        result = client.AsyncResult(request.match_info["task_id"])
        state = await asyncio.get_running_loop().run_in_executor(executor, lambda: result.state)
        return web.json_response({"task_id": result.id, "state": state})

    async def cleanup(_app):
        executor.shutdown(wait=False, cancel_futures=True)
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()

    app = web.Application()
    app.router.add_post("/orders/{order_id}", post_order)
    app.router.add_get("/tasks/{task_id}", task_status)
    app.on_cleanup.append(cleanup)
    return app


# ------------------------------------------------------------------------------------------------
# The experiments
# ------------------------------------------------------------------------------------------------

def _count(dsn: str, sql: str, *params) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


def _rows(dsn: str, sql: str, *params) -> list[tuple]:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def _effects(dsn: str, orders: list[str]) -> dict:
    """Per order: emails sent, reports saved, runs, errors — counted in the database."""
    emails = dict(_rows(dsn, "SELECT order_id, count(*) FROM order_emails WHERE order_id = ANY(%s) GROUP BY 1", orders))
    reports = dict(_rows(dsn, "SELECT order_id, count(*) FROM order_reports WHERE order_id = ANY(%s) GROUP BY 1", orders))
    runs = dict(_rows(dsn, "SELECT order_id, count(*) FROM order_runs WHERE order_id = ANY(%s) GROUP BY 1", orders))
    errors = _rows(dsn, "SELECT order_id, error FROM order_runs WHERE order_id = ANY(%s) AND error IS NOT NULL "
                        "ORDER BY id", orders)
    return {"emails": emails, "reports": reports, "runs": runs, "errors": errors}


@dataclass
class Delivery:
    """What became of ``orders`` after an experiment, counted in the database."""

    experiment: str
    orders: list[str]
    emails: dict
    reports: dict
    runs: dict
    errors: list
    killed: int = 0  # runs cut short by the kill
    waited_s: float = 0.0
    pending: int = 0  # messages still in the broker (queued or unacked) when the experiment gave up
    notes: list = field(default_factory=list)

    @property
    def completed(self) -> list[str]:
        return [o for o in self.orders if self.reports.get(o)]

    @property
    def lost(self) -> list[str]:
        return [o for o in self.orders if not self.reports.get(o)]

    @property
    def emailed_twice(self) -> list[str]:
        return [o for o in self.orders if self.emails.get(o, 0) > 1]

    @property
    def never_emailed(self) -> list[str]:
        return [o for o in self.completed if not self.emails.get(o)]

    @property
    def exactly_once(self) -> bool:
        return not (self.lost or self.emailed_twice or self.never_emailed)

    def summary(self) -> dict:
        return {"experiment": self.experiment, "orders": len(self.orders), "completed": len(self.completed),
                "lost": len(self.lost), "emailed twice": len(self.emailed_twice),
                "completed, no email": len(self.never_emailed), "runs": sum(self.runs.values()),
                "runs cut short by the kill": self.killed, "failed runs": len(self.errors),
                "seconds waited": round(self.waited_s, 1)}

    def __str__(self) -> str:
        s = self.summary()
        text = (f"{s['experiment']}: {s['completed']}/{s['orders']} completed, {s['lost']} lost, "
                f"{s['emailed twice']} emailed twice, {s['runs']} runs ({s['runs cut short by the kill']} cut short)")
        if self.errors:
            text += f"; {len(self.errors)} failed runs, e.g. {self.errors[0][1]}"
        return text


def _wait_for(dsn: str, orders: list[str], w: SubmissionWorker, r, *, since_run_id: int = 0,
              ignore_runs: tuple = (), deadline: float, visibility_s: float | None) -> int:
    """Wait until every order has its report, or nothing more can happen before ``deadline`` (a
    ``time.time()``): no message queued, none running, and any unacknowledged one not due back from
    the broker (``visibility_s`` after its delivery; None: wait for the worker to settle every
    unacknowledged message itself) before the deadline. Returns how many messages
    were still held by the broker at the end."""
    settled_since = None
    while True:
        done = _count(dsn, "SELECT count(*) FROM order_reports WHERE order_id = ANY(%s)", orders)
        running = _count(dsn, "SELECT count(*) FROM order_runs WHERE id > %s AND finished_at IS NULL "
                              "AND NOT id = ANY(%s)", since_run_id, list(ignore_runs))
        queued, unacked = w.queued(r), w.unacked(r)
        if done >= len(orders) and running == 0 and queued + unacked == 0:
            return 0
        due = r.zrange(w.prefix + "unacked_index", 0, 0, withscores=True) if unacked else []
        if not due:
            comes_back = False
        elif visibility_s is None:
            comes_back = True
        else:
            comes_back = due[0][1] + visibility_s <= deadline
        if queued == 0 and running == 0 and not comes_back:
            # Nothing queued, nothing running, nothing coming back in time. Look again 0.5 s later
            # (a message may be in transit between the broker and the worker).
            settled_since = settled_since or time.monotonic()
            if time.monotonic() - settled_since > 0.5:
                return queued + unacked
        else:
            settled_since = None
        if time.time() > deadline:
            return queued + unacked
        time.sleep(0.05)


def _last_run_id(dsn: str) -> int:
    return _count(dsn, "SELECT coalesce(max(id), 0) FROM order_runs")


def _wait_running(dsn: str, n: int, w: SubmissionWorker, timeout: float = 20.0) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(dsn, "SELECT id, order_id, pid FROM order_runs WHERE finished_at IS NULL ORDER BY id")
        if len(rows) >= n:
            return rows
        if not w.worker.alive() or _count(dsn, "SELECT count(*) FROM order_runs WHERE error IS NOT NULL"):
            break
        time.sleep(0.01)
    failed = _rows(dsn, "SELECT order_id, error FROM order_runs WHERE error IS NOT NULL LIMIT 1")
    reason = f"the task failed: {failed[0][1]}" if failed else f"worker log:\n{w.worker.log(15)}"
    raise RuntimeError(f"the worker did not start {n} jobs within {timeout:g} s; {reason}")


def kill_worker_mid_run(fn: Callable | str, settings: dict, dsn: str, *, jobs: int = 12, concurrency: int = 4,
                        wait_s: float = REDELIVERY_WAIT_S) -> Delivery:
    """``jobs`` orders; once ``concurrency`` are running (half-way through the report), ``kill -9``
    the whole worker; start a fresh one on the same queue and wait (at most ``wait_s`` after the kill)
    for every order to complete. Returns what happened, counted in the database."""
    from perflab import stack

    reset(dsn)
    r = stack.redis_client(stack.ensure().redis_url)
    orders = [f"kill-{i}" for i in range(jobs)]
    with submission_worker(fn, settings, dsn, concurrency=concurrency, label="kill") as w:
        for order in orders:
            w.client.send_task(TASK_NAME, args=[order])
        _wait_running(dsn, concurrency, w)
        time.sleep(WORK_S / 2)  # mid-report: the email is out, the report is not saved
        w.worker.kill()
        killed_at = time.time()
        killed = _count(dsn, "SELECT count(*) FROM order_runs WHERE finished_at IS NULL")
        last = _last_run_id(dsn)
        # A fresh worker on the same queue (the same broker keys), like a supervisor restarting it.
        with w.another() as fresh:
            again = SubmissionWorker(fresh, w.client, w.queue, w.prefix, dsn, settings, w.module, w.env, w.names)
            pending = _wait_for(dsn, orders, again, r, since_run_id=last, deadline=killed_at + wait_s,
                                visibility_s=visibility_timeout(settings) or KOMBU_VISIBILITY_TIMEOUT_S)
        waited = time.time() - killed_at
    outcome = Delivery("kill -9 the worker mid-run", orders, killed=killed, waited_s=waited, pending=pending,
                       **_effects(dsn, orders))
    r.close()
    return outcome


def kill_pool_process(fn: Callable | str, settings: dict, dsn: str, *, jobs: int = 4, concurrency: int = 2,
                      wait_s: float = REDELIVERY_WAIT_S) -> Delivery:
    """A prefork worker (Celery's default pool); once its processes are running jobs, ``kill -9`` one
    *pool process* (the worker itself survives and replaces it). Did that job come back?

    The visibility timeout is set to :data:`POOL_VISIBILITY_TIMEOUT_S` here, longer than the wait:
    the job must come back through the worker (``task_reject_on_worker_lost`` requeues it when the
    worker notices the lost process, within ~5 s), not through the broker's timeout."""
    from perflab import stack

    reset(dsn)
    r = stack.redis_client(stack.ensure().redis_url)
    orders = [f"pool-{i}" for i in range(jobs)]
    settings = dict(settings) if isinstance(settings, dict) else {}
    transport = settings.get("broker_transport_options")
    settings["broker_transport_options"] = {**(transport if isinstance(transport, dict) else {}),
                                            "visibility_timeout": POOL_VISIBILITY_TIMEOUT_S}
    with submission_worker(fn, settings, dsn, concurrency=concurrency, pool="prefork", label="pool") as w:
        for order in orders:
            w.client.send_task(TASK_NAME, args=[order])
        running = _wait_running(dsn, concurrency, w)
        time.sleep(WORK_S / 2)
        victim = next((pid for _, _, pid in running if pid != w.worker.pid), None)
        if victim is None:
            raise RuntimeError("the job ran in the worker's main process, not in a pool process")
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        time.sleep(0.2)
        cut = [run_id for (run_id,) in _rows(dsn, "SELECT id FROM order_runs WHERE pid = %s AND finished_at IS NULL",
                                             victim)]
        killed = len(cut)
        # The killed job's message stays unacknowledged until the worker notices the lost process
        # (then: requeued, or acknowledged as failed): wait for that, not for the broker.
        pending = _wait_for(dsn, orders, w, r, ignore_runs=tuple(cut), deadline=killed_at + wait_s,
                            visibility_s=None)
        waited = time.time() - killed_at
        notes = [] if w.worker.alive() else ["the worker itself died"]
    outcome = Delivery("kill -9 one pool process", orders, killed=killed, waited_s=waited, pending=pending,
                       notes=notes, **_effects(dsn, orders))
    r.close()
    return outcome


def submit_duplicates(fn: Callable | str, settings: dict, dsn: str, *, concurrency: int = 2,
                      timeout: float = 20.0) -> Delivery:
    """One order submitted twice at the same instant (a double click), then once more after both
    finished (a client retrying). Returns the effects, counted in the database."""
    reset(dsn)
    order = "order-42"
    started = time.monotonic()
    with submission_worker(fn, settings, dsn, concurrency=concurrency, label="dup") as w:
        pair = [w.client.send_task(TASK_NAME, args=[order]) for _ in range(2)]
        for result in pair:
            with contextlib.suppress(Exception):
                result.get(timeout=timeout, propagate=False)
        with contextlib.suppress(Exception):
            w.client.send_task(TASK_NAME, args=[order]).get(timeout=timeout, propagate=False)
    return Delivery("the same order submitted 3 times", [order], waited_s=time.monotonic() - started,
                    **_effects(dsn, [order]))


@dataclass
class OneOrder:
    status: int | str
    body: Any
    answered_ms: float
    state: str | None  # the task's final state, polled through GET /tasks/{id}, if a task id came back
    ran_in_worker: bool  # order_runs has a finished run of this order (only the task wrapper writes it)
    report_saved: bool

    def __str__(self) -> str:
        return (f"POST /orders → {self.status} in {self.answered_ms:.0f} ms, body {json.dumps(self.body)[:120]}; "
                f"task state {self.state}; ran in the worker: {self.ran_in_worker}; report saved: {self.report_saved}")


def one_order(create_order: Callable, fn: Callable | str, dsn: str, settings: dict | None = None,
              *, poll_s: float = 15.0) -> OneOrder:
    """POST one order to an app around ``create_order``; poll its task (if any) to the end."""
    import requests

    from perflab.topics.t08_offload import webapp

    reset(dsn)
    order = "single-1"
    with submission_worker(fn, settings or REFERENCE_SETTINGS, dsn, concurrency=2, label="one") as w:
        with webapp.serve(make_app(create_order, client=w.client, dsn=dsn)) as url:
            started = time.perf_counter()
            response = requests.post(f"{url}/orders/{order}", timeout=20)
            answered_ms = (time.perf_counter() - started) * 1000
            try:
                body = response.json()
            except ValueError:
                body = response.text[:200]
            state = None
            task_id = body.get("task_id") if isinstance(body, dict) else None
            if task_id:
                deadline = time.monotonic() + poll_s
                while time.monotonic() < deadline:
                    state = requests.get(f"{url}/tasks/{task_id}", timeout=10).json()["state"]
                    if state in ("SUCCESS", "FAILURE", "REVOKED"):
                        break
                    time.sleep(0.05)
    ran = _count(dsn, "SELECT count(*) FROM order_runs WHERE order_id = %s AND finished_at IS NOT NULL", order) > 0
    saved = _count(dsn, "SELECT count(*) FROM order_reports WHERE order_id = %s", order) > 0
    return OneOrder(response.status_code, body, answered_ms, state, ran, saved)


@dataclass
class LoadComparison:
    rate: float
    duration: float
    inline: Any  # load.LoadResult of the reference inline endpoint
    submission: Any  # load.LoadResult of the learner's endpoint
    orders: int
    completed: int  # of the learner's orders, reports saved by the end
    ran_in_worker: int  # of those, with a finished run logged by the task wrapper

    @property
    def fraction(self) -> float:
        return self.submission.p50_ms / self.inline.p50_ms

    def table(self):
        import pandas as pd

        return pd.DataFrame({"inline (reference)": self.inline.summary(),
                             "your create_order": self.submission.summary()}).T

    def __str__(self) -> str:
        return (f"open loop at {self.rate:g}/s for {self.duration:g} s: p50 {self.inline.p50_ms:,.0f} ms inline vs "
                f"{self.submission.p50_ms:,.1f} ms yours ({self.fraction:.3f} of inline); "
                f"{self.completed}/{self.orders} of your orders processed, {self.ran_in_worker} by the worker")


def endpoint_under_load(create_order: Callable, fn: Callable | str, dsn: str, *, rate: float = 20,
                        duration: float = 2.0, web_threads: int = 4, concurrency: int = 8,
                        drain_s: float = 20.0, timeout: float = 20.0) -> LoadComparison:
    """The same open-loop schedule against the inline reference endpoint and against ``create_order``
    (each behind ``web_threads`` threads), in one run; then wait for the learner's orders to be done."""
    from perflab import load
    from perflab.topics.t08_offload import webapp

    reset(dsn)
    with submission_worker(fn, REFERENCE_SETTINGS, dsn, concurrency=concurrency, label="load") as w:
        with webapp.serve(make_app(reference_create_order, client=w.client, dsn=dsn, web_threads=web_threads)) as url:
            inline = load.open_loop(lambda i: ("POST", f"{url}/orders/inline-{i}"), rate=rate, duration=duration,
                                    timeout=timeout)
        with webapp.serve(make_app(create_order, client=w.client, dsn=dsn, web_threads=web_threads)) as url:
            yours = load.open_loop(lambda i: ("POST", f"{url}/orders/yours-{i}"), rate=rate, duration=duration,
                                   timeout=timeout)
        orders = len(yours.requests)
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            if _count(dsn, "SELECT count(*) FROM order_reports WHERE order_id LIKE 'yours-%%'") >= orders:
                break
            time.sleep(0.1)
    completed = _count(dsn, "SELECT count(*) FROM order_reports WHERE order_id LIKE 'yours-%%'")
    in_worker = _count(dsn, "SELECT count(DISTINCT order_id) FROM order_runs WHERE order_id LIKE 'yours-%%' "
                            "AND finished_at IS NOT NULL")
    return LoadComparison(rate, duration, inline, yours, orders, completed, in_worker)
