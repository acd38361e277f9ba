"""Topic 8 · move the slow work to Celery, and lose nothing: what notebook 08 and lab 08 share.

A *job* is a plain function ``job(conn, order_id)`` (send the confirmation email, build the report,
save it); a *handler* is ``handler(conn, celery_app, order_id)`` behind ``POST /orders/{order_id}``,
returning ``(HTTP status, JSON body)``. The notebook's variants and the learner's answers are such
functions, each labelled by its docstring; the rig runs them for real and counts in the database::

    rig.reset(dsn)                                                  # the topic's tables, emptied
    print(rig.one_order(handler, job, dsn))                         # one POST /orders, polled to the end
    rig.endpoint_under_load([inline, offloaded], job, dsn)          # the same open-loop schedule for each
    rig.kill_worker_mid_run(job, settings, dsn)                     # kill -9 the worker, start a fresh one
    rig.kill_pool_process(job, settings, dsn)                       # kill -9 one prefork pool process
    rig.submit_duplicates(job, settings, dsn)                       # a double click, then a retry
    with rig.worker(job, settings, dsn) as w: w.client.send_task(TASK_NAME, args=["order-1"])

How a job reaches a worker: :func:`worker` starts ``celery -A perflab.topics.t08_offload.worker`` through
:func:`perflab.stack.celery_worker`, passing, in the one environment variable :data:`WORKER_ENV`, the
broker, a queue and a key prefix of the experiment's own, the Celery ``settings`` (a dict, as for
``app.conf.update``) and the job's source. The worker's app (:func:`app_from_env`) is configured by
:func:`configure` — the one Celery configuration, also used by the sending side — and registers the
job as :data:`TASK_NAME`, wrapped by :func:`run_job`, which logs every execution in ``order_runs``
(pid, start, end, error): that is how a run cut short by ``kill -9`` is seen. It also registers
:data:`FLAKY_TASK`, a call to a dependency that fails its first attempts (retried with backoff).

The tables (:data:`SCHEMA`): ``order_emails`` (one row per email sent: the effect a customer sees
twice), ``email_claims (order_id PRIMARY KEY)`` for a dedupe key, ``order_reports`` (the saved report,
one per completed order), ``order_runs`` (written by the rig, not by the job) and ``call_attempts``.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import secrets
import signal
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

TASK_NAME = "perflab.t08.process_order"
FLAKY_TASK = "perflab.t08.flaky_call"
# The slow part of the job (the article's ~2.5 s of report work, scaled down 10x).
WORK_S = float(os.environ.get("PERFLAB_T08_WORK_SECONDS", "0.25"))
WORKER_ENV = "PERFLAB_T08_WORKER"  # what the rig tells a worker process (JSON)
KEY_PREFIX = "perflab:t08:"
# How long an experiment waits, after a kill, for jobs to come back before calling them lost.
REDELIVERY_WAIT_S = 10.0
KOMBU_VISIBILITY_TIMEOUT_S = 3600  # the Redis transport's default
POOL_VISIBILITY_TIMEOUT_S = 60  # in the pool-process experiment: longer than the wait (see kill_pool_process)

SCHEMA = """
CREATE TABLE IF NOT EXISTS public.order_emails (id bigserial PRIMARY KEY, order_id text NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS public.email_claims (order_id text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS public.order_reports (order_id text PRIMARY KEY, body text NOT NULL,
    saved_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS public.order_runs (id bigserial PRIMARY KEY, order_id text NOT NULL, pid int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz, error text);
CREATE TABLE IF NOT EXISTS public.call_attempts (id bigserial PRIMARY KEY, call_id text NOT NULL, attempt int NOT NULL,
    ok boolean NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
"""


def reset(dsn: str) -> None:
    """Create the topic's tables if needed and empty them."""
    from perflab import datasets

    datasets.create_and_empty(dsn, SCHEMA, "public.order_emails, public.email_claims, public.order_reports, "
                                                 "public.order_runs, public.call_attempts")


def label(fn: Callable | str) -> str:
    """A variant's label: the first line of its docstring, else its name."""
    if isinstance(fn, str):
        return _source_of(fn)[1]
    doc = inspect.getdoc(fn)
    return doc.splitlines()[0].rstrip(".") if doc else fn.__name__


# ------------------------------------------------------------------------------------------------
# What a job may call (and the names a job's source finds without importing)
# ------------------------------------------------------------------------------------------------

def send_confirmation_email(conn, order_id: str) -> None:
    """Send the customer's confirmation email (here: one row in ``order_emails``, per call).

    Inside ``with conn.transaction():`` it commits or rolls back with the rest of the block."""
    conn.execute("INSERT INTO public.order_emails (order_id) VALUES (%s)", (order_id,))


def build_report(order_id: str) -> str:
    """The slow part of the job: ``WORK_S`` seconds of report building. Returns the report's text."""
    time.sleep(WORK_S)
    return f"report for order {order_id}"


def job_namespace() -> dict:
    """What a job's (or handler's) source may use without importing it."""
    return {"TASK_NAME": TASK_NAME, "WORK_S": WORK_S, "send_confirmation_email": send_confirmation_email,
            "build_report": build_report, "json": json, "os": os, "time": time, "secrets": secrets}


# What a learner's job or handler may use without importing it (lab 08's LabSpec(namespace=...)).
NAMESPACE = job_namespace()


# The notebook's baseline: an idempotent job, run inline by the reference handler.
LATE_ACKS = {
    "task_acks_late": True,  # acknowledge when the task returns, not when it starts
    "task_reject_on_worker_lost": True,  # a pool process that dies: requeue its task, don't ack it
    "broker_transport_options": {"visibility_timeout": 4},  # Redis redelivers an unacked message after 4 s
}


def reference_job(conn, order_id):
    """idempotent job (reference)"""
    with conn.transaction():
        claimed = conn.execute("INSERT INTO public.email_claims (order_id) VALUES (%s) ON CONFLICT DO NOTHING "
                               "RETURNING order_id", (order_id,)).fetchone()
        if claimed is not None:
            send_confirmation_email(conn, order_id)
    report = build_report(order_id)
    conn.execute("INSERT INTO public.order_reports (order_id, body) VALUES (%s, %s) ON CONFLICT (order_id) DO NOTHING",
                 (order_id, report))
    return {"order_id": order_id}


def inline_reference(conn, celery_app, order_id):
    """inline (reference)"""
    reference_job(conn, order_id)
    return 200, {"order_id": order_id, "status": "done"}


# ------------------------------------------------------------------------------------------------
# The one Celery configuration: the worker's app and the sending side
# ------------------------------------------------------------------------------------------------

# Settings the rig owns: where the broker is, which queue, how keys are namespaced.
RIG_OWNED = frozenset({"broker_url", "result_backend", "task_default_queue", "task_queues", "task_routes",
                       "imports", "include", "worker_concurrency", "worker_pool", "broker_connection_retry_on_startup"})


def configure(app, *, broker: str, queue: str, prefix: str, settings: dict | None = None):
    """Point ``app`` at ``broker`` (broker and result backend), ``queue`` and the key ``prefix``, then
    apply ``settings`` (a dict of Celery settings; the keys in :data:`RIG_OWNED` are the rig's)."""
    settings = dict(settings or {})
    transport = settings.pop("broker_transport_options", None)
    config = {
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
    config.update({k: v for k, v in settings.items() if k not in RIG_OWNED})
    config["broker_transport_options"] = {
        **(transport if isinstance(transport, dict) else {}),  # the visibility timeout (kombu's default: 1 h)
        "global_keyprefix": prefix,  # every broker key of this experiment under its own prefix
        # Look for abandoned messages every second (kombu's defaults: every 10 s, throttled x10), so a
        # redelivery comes visibility_timeout after a crash, not minutes later.
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        # A worker killed while it holds the restore mutex blocks every restore until the mutex expires.
        "unacked_mutex_expire": 3,
        # An idle worker waits on the queue in BRPOP for this long (kombu's default: 1 s) before it looks
        # again; a warm shutdown (SIGTERM: running tasks finish) waits for that wait to end. At 0.1 s a
        # worker stops in ~0.25 s instead of ~1.2 s. A message still arrives the moment it is queued.
        "polling_interval": 0.1,
    }
    app.conf.update(config)
    return app


def check_settings(settings: Any) -> list[str]:
    """Problems with a dict of Celery settings (empty when it is usable)."""
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


class FlakyDependencyError(ConnectionError):
    """The payment provider (or mail server) did not answer."""


def app_from_env():
    """The worker's app (``perflab.topics.t08_offload.worker``), from what the rig put in :data:`WORKER_ENV`."""
    from celery import Celery

    spec = json.loads(os.environ[WORKER_ENV])
    app = configure(Celery("perflab.t08.worker"), broker=spec["broker"], queue=spec["queue"], prefix=spec["prefix"],
                    settings=spec["settings"])
    namespace = {**job_namespace(), "__name__": "perflab_t08_job"}
    exec(compile(spec["source"], f"<{spec['name']}>", "exec"), namespace)  # noqa: S102 - the job, as written
    job = namespace[spec["name"]]

    @app.task(name=TASK_NAME)
    def process_order(order_id):
        return run_job(job, spec["dsn"], order_id)

    # retry_backoff is a whole number of seconds (Celery rounds the countdown): 1 s, 2 s, 4 s, ...
    # retry_jitter is off only so that the lesson's table shows the doubling; leave it on in production.
    @app.task(name=FLAKY_TASK, bind=True, autoretry_for=(FlakyDependencyError,), retry_backoff=1,
              retry_backoff_max=8, retry_jitter=False, max_retries=5)
    def flaky_call(self, call_id: str, failures: int) -> dict:
        """Fails the first ``failures`` attempts; Celery retries it after 1 s, 2 s, 4 s, … (backoff)."""
        attempt = self.request.retries + 1
        ok = attempt > failures
        _conn(spec["dsn"]).execute("INSERT INTO public.call_attempts (call_id, attempt, ok) VALUES (%s, %s, %s)",
                                   (call_id, attempt, ok))
        if not ok:
            raise FlakyDependencyError(f"attempt {attempt}: the dependency is down")
        return {"call_id": call_id, "attempts": attempt}

    return app


_local = threading.local()


def _conn(dsn: str):
    """One connection per worker thread (or pool process)."""
    from perflab import stack

    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or getattr(_local, "pid", None) != os.getpid():
        conn = stack.connect(dsn=dsn)
        _local.conn, _local.pid = conn, os.getpid()
    return conn


def run_job(job: Callable, dsn: str, order_id: str) -> Any:
    """The one job runner: ``job(conn, order_id)``, its run logged (pid, start, end, error) in order_runs."""
    conn = _conn(dsn)
    run_id = conn.execute("INSERT INTO public.order_runs (order_id, pid) VALUES (%s, %s) RETURNING id",
                          (order_id, os.getpid())).fetchone()[0]
    try:
        value = job(conn, order_id)
    except BaseException as exc:
        if conn.info.transaction_status != 0:  # a failed explicit transaction: leave it first
            with contextlib.suppress(Exception):
                conn.rollback()
        conn.execute("UPDATE public.order_runs SET finished_at = clock_timestamp(), error = %s WHERE id = %s",
                     (f"{type(exc).__name__}: {exc}"[:500], run_id))
        raise
    conn.execute("UPDATE public.order_runs SET finished_at = clock_timestamp() WHERE id = %s", (run_id,))
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        value = repr(value)
    return value


def _source_of(fn: Callable | str) -> tuple[str, str]:
    """(source, function name) of a job given as a function or as source text (its last function)."""
    if isinstance(fn, str):
        import ast

        tree = ast.parse(textwrap.dedent(fn))
        names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        if not names:
            raise ValueError("the job's source defines no function")
        return textwrap.dedent(fn), names[-1]
    return textwrap.dedent(inspect.getsource(fn)), fn.__name__


# ------------------------------------------------------------------------------------------------
# Workers
# ------------------------------------------------------------------------------------------------

@dataclass
class Worker:
    """A running worker of one experiment (:func:`worker`), and a client app that sends to its queue."""

    worker: Any  # stack.CeleryWorker
    client: Any  # a Celery app configured for the same broker, queue and prefix
    queue: str
    prefix: str
    env: dict
    names: list = field(default_factory=list)  # every worker process started for this experiment
    start: Callable | None = None  # how a worker process is started (default: stack.celery_worker)

    def another(self, label: str = "restart", **kwargs):
        """A fresh worker process on the same queue and broker keys (like a supervisor restarting it)."""
        from perflab import stack

        kwargs.setdefault("concurrency", self.worker.concurrency)
        name = f"t08-{label}-{secrets.token_hex(3)}"
        self.names.append(name)
        return (self.start or stack.celery_worker)(WORKER_APP, queue=self.queue, env=self.env, name=name, **kwargs)

    def unacked(self, r) -> int:
        return int(r.hlen(self.prefix + "unacked"))

    def queued(self, r) -> int:
        return int(r.llen(self.prefix + self.queue))


WORKER_APP = "perflab.topics.t08_offload.worker"  # the module `celery -A` loads


@contextlib.contextmanager
def worker(job: Callable | str, settings: dict | None, dsn: str, *, concurrency: int = 4, pool: str = "threads",
           label: str = "w", broker: str | None = None, start: Callable | None = None) -> Iterator[Worker]:
    """A real worker running ``job`` as :data:`TASK_NAME` with ``settings`` applied; stopped (and its
    Redis keys deleted) when the block ends.

    ``dsn`` is what the job connects with; ``broker`` the Redis URL (default: the stack's); ``start`` how a
    worker process is started, with :func:`perflab.stack.celery_worker`'s signature (default: that one; the
    grader passes one that starts it in a sandbox)."""
    from celery import Celery

    from perflab import stack

    broker = broker or stack.ensure().redis_url
    prefix = f"{KEY_PREFIX}{os.getpid()}:{secrets.token_hex(4)}:"   # the process's own keys (see tests/test_lab08.py)
    queue = f"t08-{label}-{secrets.token_hex(3)}"
    source, name = _source_of(job)
    spec = {"broker": broker, "queue": queue, "prefix": prefix, "settings": settings or {}, "dsn": dsn,
            "source": source, "name": name}
    env = {WORKER_ENV: json.dumps(spec), "PERFLAB_T08_WORK_SECONDS": str(WORK_S)}
    names = [f"t08-{label}-{secrets.token_hex(3)}"]
    client = configure(Celery("perflab.t08.client"), broker=broker, queue=queue, prefix=prefix)
    try:
        with (start or stack.celery_worker)(WORKER_APP, queue=queue, concurrency=concurrency,
                                            pool=pool, env=env, name=names[0]) as started:
            yield Worker(started, client, queue, prefix, env, names, start)
        for each in names:  # the experiment went as planned: its workers' logs are not needed
            for suffix in (".log", ".out"):
                (started.log_file.parent / f"{each}{suffix}").unlink(missing_ok=True)
    finally:  # on a failure the workers' logs stay in .perflab/celery/, to be read
        with contextlib.suppress(Exception):
            client.close()
        _delete_keys(stack.redis_client(broker), prefix)


def _delete_keys(r, prefix: str) -> None:
    with contextlib.suppress(Exception):
        keys = list(r.scan_iter(match=prefix + "*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()


# ------------------------------------------------------------------------------------------------
# The one app factory: POST /orders/{id} calls the handler; GET /tasks/{id} reports a task's state
# ------------------------------------------------------------------------------------------------

def make_app(handler: Callable, *, client, dsn: str, web_threads: int = 4):
    """An aiohttp app whose ``POST /orders/{order_id}`` calls ``handler(conn, client, order_id)`` on one
    of ``web_threads`` threads (a web server's worker threads: an inline job holds one for its whole
    duration, an enqueue for a millisecond) and answers with the ``(status, body)`` it returns;
    ``GET /tasks/{task_id}`` gives the task's state (and its result once it succeeded)."""
    import asyncio

    from aiohttp import web

    from perflab import stack

    executor = ThreadPoolExecutor(web_threads, thread_name_prefix="t08-web")
    local = threading.local()
    opened: list = []

    def handle(order_id: str):
        conn = getattr(local, "conn", None)
        if conn is None or conn.closed:
            conn = local.conn = stack.connect(dsn=dsn)
            opened.append(conn)
        return handler(conn, client, order_id)

    async def post_order(request):
        order_id = request.match_info["order_id"]
        try:
            status, body = await asyncio.get_running_loop().run_in_executor(executor, handle, order_id)
        except Exception as exc:  # noqa: BLE001 - the handler's error is the answer
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)
        return web.json_response(body, status=int(status))

    async def task_status(request):
        result = client.AsyncResult(request.match_info["task_id"])
        loop = asyncio.get_running_loop()
        state = await loop.run_in_executor(executor, lambda: result.state)
        body = {"task_id": result.id, "state": state}
        if state == "SUCCESS":
            body["result"] = await loop.run_in_executor(executor, lambda: result.result)
        return web.json_response(body)

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


@contextlib.contextmanager
def serve(app) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1 in a thread with its own event loop; yield its base URL."""
    import asyncio
    import socket

    from aiohttp import web

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True, name="t08-webapp")
    thread.start()
    started.wait(15)
    if failure:
        raise failure[0]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


# ------------------------------------------------------------------------------------------------
# The experiments
# ------------------------------------------------------------------------------------------------

def _rows(dsn: str, sql: str, *params) -> list[tuple]:
    from perflab import stack

    with stack.connect(dsn=dsn) as conn:
        return conn.execute(sql, params).fetchall()


def _count(dsn: str, sql: str, *params) -> int:
    return _rows(dsn, sql, *params)[0][0]


def _effects(dsn: str, orders: list[str]) -> dict:
    """Per order: emails sent, reports saved, runs, errors — counted in the database."""
    emails = dict(_rows(dsn, "SELECT order_id, count(*) FROM public.order_emails WHERE order_id = ANY(%s) GROUP BY 1", orders))
    reports = dict(_rows(dsn, "SELECT order_id, count(*) FROM public.order_reports WHERE order_id = ANY(%s) GROUP BY 1", orders))
    runs = dict(_rows(dsn, "SELECT order_id, count(*) FROM public.order_runs WHERE order_id = ANY(%s) GROUP BY 1", orders))
    errors = _rows(dsn, "SELECT order_id, error FROM public.order_runs WHERE order_id = ANY(%s) AND error IS NOT NULL "
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
                "lost": len(self.lost), "emails sent": sum(self.emails.values()),
                "emailed twice": len(self.emailed_twice), "completed, no email": len(self.never_emailed),
                "runs": sum(self.runs.values()), "runs cut short by the kill": self.killed,
                "failed runs": len(self.errors), "seconds waited": round(self.waited_s, 1)}

    def __str__(self) -> str:
        s = self.summary()
        text = (f"{s['experiment']}: {s['completed']}/{s['orders']} completed, {s['lost']} lost, "
                f"{s['emailed twice']} emailed twice, {s['runs']} runs ({s['runs cut short by the kill']} cut short)")
        if self.errors:
            text += f"; {len(self.errors)} failed runs, e.g. {self.errors[0][1]}"
        return text


def _wait_for(dsn: str, orders: list[str], w: Worker, r, *, since_run_id: int = 0,
              ignore_runs: tuple = (), deadline: float, visibility_s: float | None, tracker=None) -> int:
    """Wait until every order has its report, or nothing more can happen before ``deadline`` (a
    ``time.time()``): no message queued, none running, and any unacknowledged one not due back from
    the broker (``visibility_s`` after its delivery; None: wait for the worker to settle every
    unacknowledged message itself) before the deadline. Returns how many messages were still held
    by the broker at the end. ``tracker`` (a ``perflab.progress`` tracker counting orders) is told how many
    orders have their report."""
    settled_since = None
    while True:
        done = _count(dsn, "SELECT count(*) FROM public.order_reports WHERE order_id = ANY(%s)", orders)
        if tracker is not None:
            tracker.update(min(done, tracker.total), detail=f"{done} of {len(orders)} orders reported")
        running = _count(dsn, "SELECT count(*) FROM public.order_runs WHERE id > %s AND finished_at IS NULL "
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


def _children(pid: int) -> set[int]:
    """Every process below ``pid`` (a worker's pool), as the OS reports it."""
    import psutil

    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.Error:
        return set()


def _wait_running(dsn: str, n: int, w: Worker, timeout: float = 20.0) -> list[tuple]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = _rows(dsn, "SELECT id, order_id, pid FROM public.order_runs WHERE finished_at IS NULL ORDER BY id")
        if len(rows) >= n:
            return rows
        if not w.worker.alive() or _count(dsn, "SELECT count(*) FROM public.order_runs WHERE error IS NOT NULL"):
            break
        time.sleep(0.01)
    failed = _rows(dsn, "SELECT order_id, error FROM public.order_runs WHERE error IS NOT NULL LIMIT 1")
    reason = f"the task failed: {failed[0][1]}" if failed else f"worker log:\n{w.worker.log(15)}"
    raise RuntimeError(f"the worker did not start {n} jobs within {timeout:g} s; {reason}")


def kill_worker_mid_run(job: Callable | str, settings: dict, dsn: str, *, jobs: int = 12, concurrency: int = 4,
                        wait_s: float = REDELIVERY_WAIT_S, count_dsn: str | None = None, broker: str | None = None,
                        start: Callable | None = None) -> Delivery:
    """``jobs`` orders; once ``concurrency`` are running (half-way through the report), ``kill -9``
    the whole worker; start a fresh one on the same queue and wait (at most ``wait_s`` after the kill)
    for every order to complete. Returns what happened, counted in the database.

    ``count_dsn``: where the rig resets and counts (default ``dsn``, what the job connects with);
    ``broker`` and ``start``: as for :func:`worker`."""
    from perflab import progress as tracking
    from perflab import stack

    job_dsn, dsn = dsn, count_dsn or dsn
    reset(dsn)
    r = stack.redis_client(broker or stack.ensure().redis_url)
    orders = [f"kill-{i}" for i in range(jobs)]
    with tracking.track(jobs, unit="orders", what="kill -9 mid-run, then redelivery") as tracker, \
            worker(job, settings, job_dsn, concurrency=concurrency, label="kill", broker=broker, start=start) as w:
        for order in orders:
            w.client.send_task(TASK_NAME, args=[order])
        _wait_running(dsn, concurrency, w)
        time.sleep(WORK_S / 2)  # mid-report: the email is out, the report is not saved
        w.worker.kill()
        killed_at = time.time()
        killed = _count(dsn, "SELECT count(*) FROM public.order_runs WHERE finished_at IS NULL")
        last = _count(dsn, "SELECT coalesce(max(id), 0) FROM public.order_runs")
        with w.another() as fresh:
            again = Worker(fresh, w.client, w.queue, w.prefix, w.env, w.names)
            pending = _wait_for(dsn, orders, again, r, since_run_id=last, deadline=killed_at + wait_s,
                                visibility_s=visibility_timeout(settings or {}) or KOMBU_VISIBILITY_TIMEOUT_S,
                                tracker=tracker)
        waited = time.time() - killed_at
    r.close()
    return Delivery("kill -9 the worker mid-run", orders, killed=killed, waited_s=waited, pending=pending,
                    **_effects(dsn, orders))


def kill_pool_process(job: Callable | str, settings: dict, dsn: str, *, jobs: int = 4, concurrency: int = 2,
                      wait_s: float = REDELIVERY_WAIT_S, count_dsn: str | None = None, broker: str | None = None,
                      start: Callable | None = None) -> Delivery:
    """A prefork worker (Celery's default pool); once its processes are running jobs, ``kill -9`` one
    *pool process* (the worker itself survives and replaces it). Did that job come back?

    The visibility timeout is set to :data:`POOL_VISIBILITY_TIMEOUT_S` here, longer than the wait:
    the job must come back through the worker (``task_reject_on_worker_lost`` requeues it when the
    worker notices the lost process, within ~5 s), not through the broker's timeout."""
    from perflab import stack

    job_dsn, dsn = dsn, count_dsn or dsn
    reset(dsn)
    r = stack.redis_client(broker or stack.ensure().redis_url)
    orders = [f"pool-{i}" for i in range(jobs)]
    settings = dict(settings) if isinstance(settings, dict) else {}
    transport = settings.get("broker_transport_options")
    settings["broker_transport_options"] = {**(transport if isinstance(transport, dict) else {}),
                                            "visibility_timeout": POOL_VISIBILITY_TIMEOUT_S}
    with worker(job, settings, job_dsn, concurrency=concurrency, pool="prefork", label="pool", broker=broker,
                start=start) as w:
        for order in orders:
            w.client.send_task(TASK_NAME, args=[order])
        running = _wait_running(dsn, concurrency, w)
        time.sleep(WORK_S / 2)
        # The victim: the pool process whose job started last, asked again just before the kill (on a loaded
        # machine the jobs seen running a moment ago may have finished since). Only a pool process of this
        # worker is ever signalled (the pids come from a table, so check them).
        pool_pids = _children(w.worker.pid)
        running = _rows(dsn, "SELECT id, order_id, pid FROM public.order_runs WHERE finished_at IS NULL "
                             "ORDER BY started_at DESC") or running
        victim = next((pid for _, _, pid in running if pid != w.worker.pid and pid in pool_pids), None)
        if victim is None:
            raise RuntimeError("no job was running in a pool process of the worker (the runs logged pids "
                               f"{sorted({pid for _, _, pid in running})}, the worker's pool is {sorted(pool_pids)})")
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        time.sleep(0.2)
        cut = [run_id for (run_id,) in _rows(dsn, "SELECT id FROM public.order_runs WHERE pid = %s AND finished_at IS NULL",
                                             victim)]
        # The killed job's message stays unacknowledged until the worker notices the lost process
        # (then: requeued, or acknowledged as failed): wait for that, not for the broker.
        pending = _wait_for(dsn, orders, w, r, ignore_runs=tuple(cut), deadline=killed_at + wait_s,
                            visibility_s=None)
        waited = time.time() - killed_at
        notes = [] if w.worker.alive() else ["the worker itself died"]
    r.close()
    return Delivery("kill -9 one pool process", orders, killed=len(cut), waited_s=waited, pending=pending,
                    notes=notes, **_effects(dsn, orders))


def submit_duplicates(job: Callable | str, settings: dict | None, dsn: str, *, concurrency: int = 2,
                      timeout: float = 20.0, count_dsn: str | None = None, broker: str | None = None,
                      start: Callable | None = None) -> Delivery:
    """One order submitted twice at the same instant (a double click), then once more after both
    finished (a client retrying). Returns the effects, counted in the database (``count_dsn``, ``broker``,
    ``start``: as for :func:`kill_worker_mid_run`)."""
    job_dsn, dsn = dsn, count_dsn or dsn
    reset(dsn)
    order = "order-42"
    started = time.monotonic()
    outcomes = []

    def settle(result) -> None:
        """Wait for a copy; note how it ended (the job's own errors are counted in the database)."""
        try:
            value = result.get(timeout=timeout, propagate=False)
            outcomes.append(result.state if result.state == "SUCCESS" else f"{result.state}: {value!r}"[:300])
        except Exception as exc:  # noqa: BLE001 - a timeout or a broker error: noted, judged by the caller
            outcomes.append(f"{type(exc).__name__}: {exc}"[:300])

    with worker(job, settings, job_dsn, concurrency=concurrency, label="dup", broker=broker, start=start) as w:
        pair = [w.client.send_task(TASK_NAME, args=[order]) for _ in range(2)]
        for result in pair:
            settle(result)
        settle(w.client.send_task(TASK_NAME, args=[order]))
        effects = _effects(dsn, [order])
        notes = [] if sum(effects["runs"].values()) else \
            [f"the copies ended: {'; '.join(outcomes)}", f"worker log:\n{w.worker.log(15)}"]
    return Delivery("the same order submitted 3 times", [order], waited_s=time.monotonic() - started, notes=notes,
                    **effects)


def retries_with_backoff(dsn: str, *, failures: int = 2, timeout: float = 30.0) -> list[dict]:
    """:data:`FLAKY_TASK` against a dependency that is down for its first ``failures`` attempts: every
    attempt, with the seconds since the previous one (Celery's exponential backoff)."""
    reset(dsn)
    with worker(reference_job, None, dsn, concurrency=2, label="flaky") as w:
        result = w.client.send_task(FLAKY_TASK, args=["payment-7", failures]).get(timeout=timeout)
    rows = _rows(dsn, "SELECT attempt, ok, extract(epoch FROM at)::float8 FROM public.call_attempts ORDER BY attempt")
    return [{"attempt": attempt, "ok": ok, "seconds after the previous attempt": round(at - rows[i - 1][2], 2) if i else None,
             "result": result if ok else None} for i, (attempt, ok, at) in enumerate(rows)]


@dataclass
class OneOrder:
    handler: str
    status: int | str
    body: Any
    answered_ms: float
    state: str | None  # the task's final state, polled through GET /tasks/{id}, if a task id came back
    ran_in_worker: bool  # order_runs has a finished run of this order (only the worker's job runner writes it)
    report_saved: bool

    def __str__(self) -> str:
        return (f"{self.handler}: POST /orders → {self.status} in {self.answered_ms:.0f} ms, body "
                f"{json.dumps(self.body)[:120]}; task state {self.state}; ran in the worker: {self.ran_in_worker}; "
                f"report saved: {self.report_saved}")


def one_order(handler: Callable, job: Callable | str, dsn: str, settings: dict | None = None,
              *, poll_s: float = 15.0) -> OneOrder:
    """POST one order to an app around ``handler`` (a worker runs ``job``); poll its task (if any) to the end."""
    import requests

    reset(dsn)
    order = "single-1"
    with worker(job, settings or LATE_ACKS, dsn, concurrency=2, label="one") as w:
        with serve(make_app(handler, client=w.client, dsn=dsn)) as url:
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
    ran = _count(dsn, "SELECT count(*) FROM public.order_runs WHERE order_id = %s AND finished_at IS NOT NULL", order) > 0
    saved = _count(dsn, "SELECT count(*) FROM public.order_reports WHERE order_id = %s", order) > 0
    return OneOrder(label(handler), response.status_code, body, answered_ms, state, ran, saved)


@dataclass
class LoadComparison:
    """The same open-loop schedule against each handler, in one run (:func:`endpoint_under_load`)."""

    rate: float
    duration: float
    results: dict  # label -> load.LoadResult, in the order given (the first is the baseline)
    started: dict  # label -> wall-clock time (time.time()) of that load's start
    orders: int  # orders placed through the last handler
    completed: int  # of those, reports saved by the end
    ran_in_worker: int  # of those, with a finished run logged by the worker's job runner
    queue_depth: list  # (wall-clock time, messages waiting in the queue), every 100 ms
    finished: list  # wall-clock times at which the worker finished the last handler's orders

    @property
    def baseline(self):
        return next(iter(self.results.values()))

    @property
    def candidate(self):
        return list(self.results.values())[-1]

    @property
    def fraction(self) -> float:
        """The last handler's p50 as a share of the first's."""
        return self.candidate.p50_ms / self.baseline.p50_ms

    def table(self):
        import pandas as pd

        return pd.DataFrame({name: run.summary() for name, run in self.results.items()}).T

    def plot(self, workers: int | None = None, save: str | bool | None = None):
        """Top: each request's latency against when it was due, per handler (log). Bottom: the last
        handler's queue depth (LLEN) and the jobs the worker finished per second (``workers`` threads),
        from that handler's load start; dotted, the moment the load stopped."""
        import matplotlib
        import numpy as np
        import pandas as pd

        from perflab import plots

        t0 = self.started[list(self.results)[-1]]
        depth = pd.DataFrame(self.queue_depth, columns=["t", "queued"]).assign(t=lambda d: d.t - t0).query("t >= 0")
        finished = pd.Series(self.finished, dtype=float) - t0
        colors = plots.variant_colors(list(self.results))
        with matplotlib.rc_context(plots.COURSE_STYLE):
            figure = plots.CourseFigure(figsize=(10, 6.4), layout="constrained")
            ax_lat, ax_q = figure.subplots(2, 1)
            for name, result in self.results.items():
                ax_lat.plot(result.requests.due_s, result.requests.latency_ms, ".", color=colors[name],
                            label=f"{name}: p50 {result.p50_ms:,.0f} ms, p99 {result.p99_ms:,.0f} ms")
            ax_lat.set_yscale("log")
            ax_lat.set_xlabel("when the request was due (s)")
            ax_lat.set_ylabel("latency from due time (ms)")
            ax_lat.set_title(f"Endpoint latency at {self.rate:g} orders/s (open loop)")
            ax_lat.legend()
            ax_q.step(depth.t, depth.queued, where="post", color=plots.OTHER_COLORS[0],
                      label="jobs waiting in the queue (LLEN)")
            bins = np.arange(0, max(depth.t.max(), finished.max() if len(finished) else 0) + 0.5, 0.5)
            threads = f" ({workers} worker threads)" if workers else ""
            ax_q.bar(bins[:-1], np.histogram(finished, bins=bins)[0] / 0.5, width=0.45, align="edge",
                     color=plots.OTHER_COLORS[1], alpha=0.6, label=f"jobs finished per second{threads}")
            ax_q.axvline(self.duration, color=plots.MUTED, linestyle=":", linewidth=1)
            ax_q.set_xlabel("seconds since the offloaded load started (dotted: the load stops)")
            ax_q.set_ylabel("jobs (waiting) · jobs per second (finished)")
            ax_q.set_title("The offloaded work: queue depth and worker throughput")
            ax_q.legend()
        if save:
            plots.save(figure, "load comparison" if save is True else str(save))
        return figure

    def __str__(self) -> str:
        (first, base), (last, cand) = list(self.results.items())[0], list(self.results.items())[-1]
        return (f"open loop at {self.rate:g}/s for {self.duration:g} s: p50 {base.p50_ms:,.0f} ms {first} vs "
                f"{cand.p50_ms:,.1f} ms {last} ({self.fraction:.3f} of it); "
                f"{self.completed}/{self.orders} of the last one's orders processed, {self.ran_in_worker} by the worker")


def endpoint_under_load(handlers: list[Callable] | dict[str, Callable], job: Callable | str, dsn: str, *,
                        rate: float = 20, duration: float = 2.0, web_threads: int = 4, concurrency: int = 8,
                        drain_s: float = 20.0, timeout: float = 20.0) -> LoadComparison:
    """The same open-loop schedule against each handler in turn (each behind ``web_threads`` threads,
    one worker running ``job`` behind them all); then wait (at most ``drain_s``) for the last handler's
    orders to be done. ``handlers``: a list (labelled by their docstrings) or ``{label: handler}``.
    A sampler reads the queue's length (``LLEN``) every 100 ms throughout."""
    from perflab import load, stack

    named = dict(handlers) if isinstance(handlers, dict) else {label(h): h for h in handlers}
    if len(named) != len(handlers):
        raise ValueError("give each handler a label of its own (a different docstring, or a dict)")
    reset(dsn)
    results, started, depth = {}, {}, []
    stop = threading.Event()
    last = f"v{len(named) - 1}-%"
    with worker(job, LATE_ACKS, dsn, concurrency=concurrency, label="load") as w:
        r = stack.redis_client(stack.ensure().redis_url)

        def sample() -> None:
            while not stop.is_set():
                depth.append((time.time(), w.queued(r)))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True, name="t08-queue-depth")
        sampler.start()
        try:
            for n, (name, handler) in enumerate(named.items()):
                with serve(make_app(handler, client=w.client, dsn=dsn, web_threads=web_threads)) as url:
                    started[name] = time.time()
                    results[name] = load.open_loop(lambda i, url=url, n=n: ("POST", f"{url}/orders/v{n}-{i}"),
                                                   rate=rate, duration=duration, timeout=timeout)
            orders = len(results[name].requests)
            deadline = time.monotonic() + drain_s
            while time.monotonic() < deadline:
                if _count(dsn, "SELECT count(*) FROM public.order_reports WHERE order_id LIKE %s", last) >= orders:
                    break
                time.sleep(0.1)
            time.sleep(0.3)
        finally:
            stop.set()
            sampler.join()
            r.close()
    completed = _count(dsn, "SELECT count(*) FROM public.order_reports WHERE order_id LIKE %s", last)
    in_worker = _count(dsn, "SELECT count(DISTINCT order_id) FROM public.order_runs WHERE order_id LIKE %s "
                            "AND finished_at IS NOT NULL", last)
    finished = [t for (t,) in _rows(dsn, "SELECT extract(epoch FROM finished_at)::float8 FROM public.order_runs "
                                         "WHERE order_id LIKE %s AND finished_at IS NOT NULL", last)]
    return LoadComparison(rate, duration, results, started, orders, completed, in_worker, depth, finished)
