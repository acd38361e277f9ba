"""Lab 08 · Move the slow work off the request, and lose nothing — the grader's checks.

The submission is three answers: ``create_order(conn, celery_app, order_id)`` (the handler behind
``POST /orders/{order_id}``, returning ``(status, body)``), ``process_order_once(conn, order_id)``
(the job: email, report, save) and ``WORKER_SETTINGS`` (a dict of Celery settings). No learner code runs
in the grader's process:

* the **job** runs in real ``celery worker`` processes (the rig's app, :mod:`perflab.topics.t08_offload.worker`,
  which registers the learner's source as the task) started by the grader **through the jail**
  (:func:`perflab.grading.jail.jail`): a jail of their own per worker (its own unprivileged user, limits
  and cgroup), with the submission sandbox's environment (its database role on its clone, its own Redis
  as the broker). The grader owns them: it ``kill -9``'s a worker by killing its whole jail, and a pool
  process only after checking it is a child of the worker it started;
* the **handler** runs in the submission's sandbox, behind the rig's web app (:mod:`.drivers`); the grader
  sends the HTTP requests and times them from outside; the inline baseline is the starter's handler from
  the solution notebook, served the same way in the reference sandbox;
* every **effect** is counted by the grader in the database with its own admin connection. The topic's
  tables are made by the grader (owned by it, checked again after each experiment): the sandbox's role may
  only add rows to ``order_emails`` (an email sent cannot be taken back), and a run counts as the worker's
  only if it was logged by a process of the worker the grader started. The task states come from the
  broker's result keys, read by the grader's own Celery client.

The checks:

* **offload** — one order answers 202 with a task id, and the job runs in the worker; under an
  open-loop load (``RATE``/s for ``DURATION`` s, the same schedule in the same run), the endpoint's
  p50 is at most ``P50_FRACTION`` of the inline version's and below half a job's duration, and
  every order placed is processed by the worker;
* **exactly once after a crash** — 12 jobs, the whole worker ``kill -9``'d mid-report, a fresh one
  started: every order has its report and exactly one email; and, in a prefork worker, one pool
  process ``kill -9``'d mid-job: its job comes back (through the worker, not the broker's timeout);
* **a duplicate submission** — the same order twice at the same instant, then once more: one email,
  one report, no failed run.

Counters first: the only timed contract is the p50, judged against the inline version measured in
the same run, and against a bound that is physical (an answer faster than half the work cannot have
waited for it).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from perflab import load, stack
from perflab.grading.grader import Check, CheckResult, Exercise, Inconclusive, LabSpec, RecordedFunction, SubmissionError
from perflab.grading.jail import Jail, jail
from perflab.topics.t08_offload import rig

RATE = 20  # orders per second, open loop: more than the inline endpoint's 4 threads can finish (16/s)
DURATION = 2.0
P50_FRACTION = 0.2  # the endpoint's p50 under load, as a share of the inline version's (same run)
P50_BOUND_MS = rig.WORK_S * 1000 / 2  # below half a job: the response did not wait for the work
MAX_LATE_SEND_MS = 250  # the load generator's own lag beyond this: the machine is too busy to judge
JOBS = 12
MIN_VISIBILITY_S = 1.0
DRIVERS = "perflab.topics.t08_offload.drivers"
READY_TIMEOUT = 30.0

# The topic's tables, made by the grader in each sandbox's clone; what the sandbox's role may do to each.
# Schema-qualified: the grader's admin connection searches pg_catalog only (see grading/isolation.py).
TABLES = ("public.order_emails", "public.email_claims", "public.order_reports", "public.order_runs",
          "public.call_attempts")
ROLE_PRIVILEGES = {"public.order_emails": "SELECT, INSERT"}  # the others: SELECT, INSERT, UPDATE, DELETE

IDEMPOTENT_HINT = ("Make process_order_once idempotent: claim the order's dedupe key (INSERT INTO public.email_claims "
                   "(order_id) VALUES (%s) ON CONFLICT DO NOTHING RETURNING order_id) in the same transaction "
                   "as the email, send only if the claim returned a row, and save the report with an upsert "
                   "(ON CONFLICT (order_id) DO NOTHING)")


# ------------------------------------------------------------------------------------------------
# The grader's side of the experiments: tables, workers in jails, the handler's app in its sandbox
# ------------------------------------------------------------------------------------------------

def _db(ctx, side: str) -> tuple[str, str, str]:
    """(role DSN, admin DSN, role) of a side's clone ("original" and "reference" share one)."""
    if side == "submission":
        return ctx.dsn, ctx.admin_dsn, ctx.role
    return ctx.reference_dsn, ctx.reference_admin_dsn, ctx.reference_role


def _prepare(ctx, side: str = "submission") -> None:
    """The topic's tables in the side's clone, made (again) by the grader: owned by it, the role granted what
    the jobs need. Whatever the sandbox made under those names before is dropped."""
    key = "submission" if side == "submission" else "reference"
    done = ctx.scratch.setdefault("tables", {})
    if key in done:
        rig.reset(_db(ctx, side)[1])
        return
    _, admin, role = _db(ctx, side)
    with stack.connect(dsn=admin) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {', '.join(TABLES)} CASCADE")
        conn.execute(rig.SCHEMA)
        for table in TABLES:
            conn.execute(f'GRANT {ROLE_PRIVILEGES.get(table, "SELECT, INSERT, UPDATE, DELETE")} ON {table} TO "{role}"')
        conn.execute(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
        done[key] = conn.execute("SELECT current_user").fetchone()[0]
    rig.reset(admin)


def _intact(ctx, side: str = "submission") -> None:
    """The grader's tables are still the grader's (the role owns the schema, so it could drop and replace them)."""
    key = "submission" if side == "submission" else "reference"
    owner = ctx.scratch["tables"][key]
    with stack.connect(dsn=_db(ctx, side)[1]) as conn:
        rows = dict(conn.execute("SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' "
                                 "AND tablename = ANY(%s)", ([t.split(".")[-1] for t in TABLES],)).fetchall())
    replaced = sorted(t for t in TABLES if rows.get(t.split(".")[-1]) != owner)
    if replaced:
        raise SubmissionError(f"the grader's tables {replaced} were dropped or replaced while your code ran: the "
                              "effects are counted in the grader's own tables; leave them in place")


def _worker_pids(worker) -> list[int]:
    """The worker's main process and its pool, as the OS reports them."""
    return sorted({worker.pid} | rig._children(worker.pid))


@dataclass
class _JailedWorker:
    """A ``celery worker`` started by the grader through the jail (the same interface as stack.CeleryWorker)."""

    name: str
    box: Jail
    process: object
    concurrency: int
    pool: str
    log_file: Path
    pids_seen: set = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self, lines: int = 30) -> str:
        text = ""
        for path in (self.log_file, self.log_file.with_suffix(".out")):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"the Celery worker exited while starting:\n{self.log(15)}")
            with contextlib.suppress(OSError):
                if " ready." in self.log_file.read_text(errors="replace"):
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the Celery worker was not ready after {timeout:g} s:\n{self.log(15)}")

    def kill(self) -> None:
        """``kill -9`` the worker: every process of its jail (its pool, and whatever it started)."""
        self.box.kill_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Warm shutdown (SIGTERM to its process group), then every process of its jail is killed."""
        if self.alive():
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.box.kill_all()


def _starter(ctx):
    """How this run starts a worker (``stack.celery_worker``'s signature): in a jail of its own, as an
    unprivileged user, with the submission sandbox's environment; owned and stopped by the grader."""
    sandbox_env = {"PERFLAB_GRADING": "1", "DATABASE_URL": ctx.dsn, "REDIS_URL": ctx.redis_url("submission")}

    @contextlib.contextmanager
    def start(app: str, *, queue: str, concurrency: int = 4, pool: str = "threads", env: dict | None = None,
              name: str = "t08-worker", loglevel: str = "INFO"):
        with jail("t08-worker", ctx.limits, sandbox_env) as box:
            log_file = box.workdir / f"{name}.log"
            extra = [f"{key}={value}" for key, value in (env or {}).items()]
            argv = ["/usr/bin/env", *extra, sys.executable, "-m", "celery", "-A", app, "worker", "--pool", pool,
                    "--concurrency", str(concurrency), "--hostname", f"{name}@%h", "--queues", queue,
                    "--loglevel", loglevel, "--logfile", str(log_file), "--prefetch-multiplier", "1",
                    "--without-gossip", "--without-mingle", "--without-heartbeat"]
            with open(log_file.with_suffix(".out"), "wb") as out:
                process = box.popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            worker = _JailedWorker(name, box, process, concurrency, pool, log_file)
            try:
                worker.wait_ready()
                yield worker
            finally:
                worker.stop()

    return start


def _experiment(ctx) -> dict:
    """What the rig's experiments need to run here: count as the grader, broker and workers of the sandbox."""
    return {"count_dsn": ctx.admin_dsn, "broker": ctx.redis_url("submission"), "start": _starter(ctx)}


class _App:
    """A side's ``create_order`` served by the rig's web app inside its sandbox (a driver); ``with`` gives its URL."""

    def __init__(self, ctx, side: str, queue: str, prefix: str, web_threads: int = 4):
        answer = ctx.function("create_order") if side == "submission" else ctx.original_function("create_order")
        self._serve = answer.via(f"{DRIVERS}:serve", timeout=30)
        self._stop = answer.via(f"{DRIVERS}:stop", timeout=30)
        self.args = (queue, prefix, web_threads)

    def __enter__(self) -> str:
        url = self._serve(*self.args)
        if not (isinstance(url, str) and url.startswith("http://127.0.0.1:")):
            raise RuntimeError(f"the sandbox's app did not start (it answered {url!r})")
        return url

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(SubmissionError):
            self._stop()


def _task_body(ctx) -> str:
    """The learner's process_order_once as source (checked first: one that cannot be re-created fails here)."""
    ctx.function("process_order_once")  # raises SubmissionError if it cannot be re-created in the sandbox
    return ctx.answers["process_order_once"].source


def _handler_loads(ctx) -> None:
    ctx.function("process_order_once")
    ctx.function("create_order")


def _reference_settings(ctx) -> dict:
    """Late acks as the solution notebook sets them (for the checks that do not grade WORKER_SETTINGS)."""
    settings = ctx.sources("reference")["WORKER_SETTINGS"]
    if not isinstance(settings, dict):
        raise RuntimeError(f"the solution notebook's WORKER_SETTINGS is not a dict literal: {settings!r}")
    return settings


def _settings(ctx) -> dict:
    settings = ctx.answers["WORKER_SETTINGS"]
    if isinstance(settings, RecordedFunction):
        raise SubmissionError("WORKER_SETTINGS should be a dict of Celery settings, not a function")
    problems = rig.check_settings(settings)
    if problems:
        raise SubmissionError("WORKER_SETTINGS: " + "; ".join(problems))
    vis = rig.visibility_timeout(settings)
    if vis is not None and vis < MIN_VISIBILITY_S:
        raise SubmissionError(
            f"WORKER_SETTINGS: a visibility_timeout of {vis:g} s is shorter than a job may wait and run: the "
            "broker would hand healthy, still-running jobs to a second worker. Keep it longer than your longest "
            f"task (here a job takes {rig.WORK_S:g} s; in production: the longest task, ETA included)")
    return settings


def _run(ctx, experiment, *args, **kwargs):
    """An experiment; a worker that cannot start or run the task is the submission's fault. The grader's
    tables must still be its own afterwards."""
    try:
        result = experiment(*args, **kwargs)
    except (SubmissionError, Inconclusive):
        raise
    except (stack.StackError, RuntimeError) as exc:
        raise SubmissionError(f"the worker could not run your task: {exc}") from None
    _intact(ctx)
    return result


def _run_again_if(ctx, missed, experiment, *args) -> rig.Delivery:
    """`_run` an experiment on the sandbox's workers (`_experiment`), and once more if ``missed(delivery)``:
    an experiment that did not happen (the kill landed after the job, the worker ran no copy) says nothing
    of the task. A caller that sees it missed twice says "inconclusive"."""
    delivery = _run(ctx, experiment, *args, **_experiment(ctx))
    if missed(delivery):
        delivery = _run(ctx, experiment, *args, **_experiment(ctx))
    return delivery


def _first_error(delivery) -> str:
    order, error = delivery.errors[0]
    return f"order {order}: {error.splitlines()[0]}"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


# ------------------------------------------------------------------------------------------------
# Exercise 1 · the endpoint answers 202 and the worker does the job
# ------------------------------------------------------------------------------------------------

def _one_order(ctx) -> rig.OneOrder:
    """One POST /orders to the learner's handler (in its sandbox), a worker (in a jail) running the job; its
    task polled through the grader's own client until it ends; the effects counted by the grader."""
    import requests

    _handler_loads(ctx)
    body = _task_body(ctx)
    _prepare(ctx)
    order = "single-1"
    run = _experiment(ctx)
    with rig.worker(body, _reference_settings(ctx), ctx.dsn, concurrency=2, label="one", broker=run["broker"],
                    start=run["start"]) as w:
        pids = _worker_pids(w.worker)
        with _App(ctx, "submission", w.queue, w.prefix) as url:
            started = time.perf_counter()
            try:
                response = requests.post(f"{url}/orders/{order}", timeout=20)
            except requests.RequestException as exc:
                raise SubmissionError(f"POST /orders/{order} got no answer: {type(exc).__name__}: {exc}") from None
            answered_ms = (time.perf_counter() - started) * 1000
            answered_at = time.time()
            try:
                answer = response.json()
            except ValueError:
                answer = response.text[:200]
        state = None
        task_id = answer.get("task_id") if isinstance(answer, dict) else None
        if task_id and isinstance(task_id, str):
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                state = w.client.AsyncResult(task_id).state  # the broker's result keys, read by the grader
                if state in ("SUCCESS", "FAILURE", "REVOKED"):
                    break
                time.sleep(0.05)
    ran = rig._count(ctx.admin_dsn, "SELECT count(*) FROM public.order_runs WHERE order_id = %s AND finished_at IS NOT NULL "
                                    "AND pid = ANY(%s)", order, pids) > 0
    saved = rig._count(ctx.admin_dsn, "SELECT count(*) FROM public.order_reports WHERE order_id = %s "
                                      "AND saved_at <= to_timestamp(%s)", order, answered_at) > 0
    _intact(ctx)
    return rig.OneOrder("your create_order", response.status_code, answer, answered_ms, state, ran, saved)


def answers_202(ctx) -> CheckResult:
    one = _run(ctx, _one_order, ctx)
    if one.status == 500:
        return CheckResult.fail(f"POST /orders/single-1 answered 500: create_order raised "
                                f"{one.body.get('error') if isinstance(one.body, dict) else one.body}")
    if one.status != 202:
        inline = " It did the whole job in the request (the report is already saved)." if one.report_saved else ""
        return CheckResult.fail(
            f"POST /orders/single-1 answered {one.status} after {one.answered_ms:.0f} ms, not 202 Accepted.{inline} "
            "Enqueue the job instead — result = celery_app.send_task(TASK_NAME, args=[order_id]) — and return "
            "202 with {'task_id': result.id, 'status_url': f'/tasks/{result.id}'}")
    if not isinstance(one.body, dict) or not one.body.get("task_id"):
        return CheckResult.fail(f"the 202 answer has no task_id ({json.dumps(one.body)[:100]}): return the id of "
                                "the task you sent, so that the client can poll GET /tasks/{task_id}")
    if one.report_saved:
        return CheckResult.fail(f"POST /orders/single-1 answered 202 after {one.answered_ms:.0f} ms, but the report "
                                "was already saved when it answered: the job ran in the request. Enqueue it and "
                                "answer at once")
    if one.state != "SUCCESS" or not one.ran_in_worker:
        return CheckResult.fail(
            f"the task {one.body['task_id']} ended in state {one.state} and the job "
            f"{'ran' if one.ran_in_worker else 'did not run'} in the worker: send the task named TASK_NAME "
            f"({rig.TASK_NAME!r}) with args=[order_id]")
    return CheckResult.ok(f"202 in {one.answered_ms:.0f} ms with a task id; the task reached SUCCESS "
                          "and the job ran in the worker")


@dataclass
class _Load:
    baseline: load.LoadResult
    candidate: load.LoadResult
    orders: int
    completed: int
    ran_in_worker: int

    @property
    def fraction(self) -> float:
        return self.candidate.p50_ms / self.baseline.p50_ms


def _under_load(ctx) -> _Load:
    """The same open-loop schedule against the starter's inline handler (reference sandbox) and against the
    learner's (its sandbox, a jailed worker behind it); requests sent and timed by the grader."""
    _handler_loads(ctx)
    body = _task_body(ctx)
    _prepare(ctx, "submission")
    _prepare(ctx, "reference")
    run = _experiment(ctx)
    results = {}
    with rig.worker(body, _reference_settings(ctx), ctx.dsn, concurrency=8, label="load", broker=run["broker"],
                    start=run["start"]) as w:
        pids = _worker_pids(w.worker)
        # The inline version needs no worker: its Celery client points at the reference's own Redis.
        with _App(ctx, "original", f"t08-inline-{w.queue}", w.prefix) as url:
            results["inline"] = load.open_loop(lambda i: ("POST", f"{url}/orders/v0-{i}"), rate=RATE,
                                               duration=DURATION, timeout=20)
        with _App(ctx, "submission", w.queue, w.prefix) as url:
            results["yours"] = load.open_loop(lambda i: ("POST", f"{url}/orders/v1-{i}"), rate=RATE,
                                              duration=DURATION, timeout=20)
        orders = len(results["yours"].requests)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if rig._count(ctx.admin_dsn, "SELECT count(*) FROM public.order_reports WHERE order_id LIKE 'v1-%%'") >= orders:
                break
            time.sleep(0.1)
        time.sleep(0.3)
        pids = sorted(set(pids) | set(_worker_pids(w.worker)))
    completed = rig._count(ctx.admin_dsn, "SELECT count(*) FROM public.order_reports WHERE order_id LIKE 'v1-%%'")
    in_worker = rig._count(ctx.admin_dsn, "SELECT count(DISTINCT order_id) FROM public.order_runs WHERE order_id LIKE 'v1-%%' "
                                          "AND finished_at IS NOT NULL AND pid = ANY(%s)", pids)
    _intact(ctx)
    return _Load(results["inline"], results["yours"], orders, completed, in_worker)


def p50_under_load(ctx) -> CheckResult:
    run = _run(ctx, _under_load, ctx)
    details = {"inline_p50_ms": round(run.baseline.p50_ms, 1), "p50_ms": round(run.candidate.p50_ms, 1),
               "p99_ms": round(run.candidate.p99_ms, 1), "fraction": round(run.fraction, 3)}
    statuses = run.candidate.requests.status.astype(str).value_counts().to_dict()
    if run.baseline.p50_ms < rig.WORK_S * 1000 or max(run.baseline.late_sends_ms, run.candidate.late_sends_ms) > MAX_LATE_SEND_MS:
        raise Inconclusive(f"the load itself did not run as scheduled here (inline p50 {run.baseline.p50_ms:.0f} ms; "
                           f"the generator up to {max(run.baseline.late_sends_ms, run.candidate.late_sends_ms):.0f} ms "
                           "late): the machine is too busy; rerun the grader")
    bad = {k: v for k, v in statuses.items() if not k.startswith("2")}
    if bad:
        return CheckResult.fail(f"under load, {sum(bad.values())} of {run.orders} requests failed ({bad}): "
                                "every POST /orders must succeed", **details)
    verdict = (f"open loop, {RATE} orders/s for {DURATION:g} s: p50 {run.candidate.p50_ms:,.1f} ms "
               f"(p99 {run.candidate.p99_ms:,.0f} ms) vs {run.baseline.p50_ms:,.0f} ms for the inline version in the "
               f"same run ({run.fraction:.3f} of it)")
    if run.candidate.p50_ms > P50_FRACTION * run.baseline.p50_ms or run.candidate.p50_ms > P50_BOUND_MS:
        return CheckResult.fail(
            f"{verdict}; at most {P50_FRACTION:g} of the inline p50 and under {P50_BOUND_MS:.0f} ms (half a job) is "
            "expected. The response still waits for the work: enqueue the job and answer 202 right away", **details)
    if run.ran_in_worker < run.orders:
        return CheckResult.fail(
            f"{verdict}, but only {run.ran_in_worker} of the {run.orders} orders placed were processed by the worker "
            f"({run.completed} reports saved): answering fast is not enough, every order must be enqueued", **details)
    return CheckResult.ok(f"{verdict}; all {run.orders} orders processed by the worker", **details)


# ------------------------------------------------------------------------------------------------
# Exercise 2 · exactly once, even when a worker is killed
# ------------------------------------------------------------------------------------------------

def _lost_message(delivery, settings: dict) -> str:
    """Why jobs were lost when the whole worker was killed."""
    n, total = len(delivery.lost), len(delivery.orders)
    vis = rig.visibility_timeout(settings)
    if not settings.get("task_acks_late"):
        running = min(delivery.killed, n)
        reserved = (f", and the {n - running} it had reserved but not started are left unacknowledged until the "
                    "broker's visibility timeout (an hour by default)") if n > running else ""
        return (f"{n} of {total} jobs were lost when the worker was killed: with early acks (Celery's default) a "
                f"task is acknowledged as soon as it starts, so the {running} jobs it was running died with it"
                f"{reserved} — set \"task_acks_late\": True, so that a task is acknowledged only when it returns")
    if vis is None or vis > rig.REDELIVERY_WAIT_S:
        shown = "one hour, Redis' default" if vis is None else f"{vis:g} s"
        return (f"{n} of {total} jobs had not come back {delivery.waited_s:.0f} s after the worker was killed: with late "
                "acks they wait, unacknowledged, until the Redis broker's visibility_timeout expires "
                f"({shown}). Set \"broker_transport_options\": {{\"visibility_timeout\": a few seconds}} — longer "
                f"than any job runs, shorter than the grader's {rig.REDELIVERY_WAIT_S:g} s wait")
    return (f"{n} of {total} jobs were lost when the worker was killed ({delivery.pending} still held by the broker "
            f"after {delivery.waited_s:.0f} s)")


def _effect_problems(delivery) -> list[str]:
    problems = []
    if delivery.emailed_twice:
        problems.append(
            f"{_plural(len(delivery.emailed_twice), 'customer')} got the confirmation email twice "
            f"(e.g. {delivery.emailed_twice[0]}): the killed jobs were redelivered — good — and ran again from the "
            f"start. {IDEMPOTENT_HINT}")
    if delivery.never_emailed:
        problems.append(f"{_plural(len(delivery.never_emailed), 'order')} completed without any email "
                        f"(e.g. {delivery.never_emailed[0]}): claim the dedupe key and send the email in one "
                        "transaction (with conn.transaction():), so a crash cannot keep one without the other")
    if delivery.errors and not delivery.lost:
        problems.append(f"{_plural(len(delivery.errors), 'run')} of process_order_once failed, e.g. "
                        f"{_first_error(delivery)}")
    return problems


def survives_worker_kill(ctx) -> CheckResult:
    settings, body = _settings(ctx), _task_body(ctx)
    _prepare(ctx)
    delivery = _run(ctx, rig.kill_worker_mid_run, body, settings, ctx.dsn, jobs=JOBS, **_experiment(ctx))
    details = delivery.summary()
    if delivery.killed == 0:
        raise Inconclusive("no job was running when the worker was killed (this machine is very slow?); rerun")
    problems = []
    if delivery.lost:
        message = _lost_message(delivery, settings)
        if delivery.errors:
            message += f"; {_plural(len(delivery.errors), 'run')} failed, e.g. {_first_error(delivery)}"
        problems.append(message)
    problems += _effect_problems(delivery)
    if problems:
        return CheckResult.fail("; and ".join(problems), **details)
    return CheckResult.ok(f"kill -9 with {delivery.killed} jobs running: all {len(delivery.orders)} orders completed, "
                          f"one email each ({sum(delivery.runs.values())} runs in all), "
                          f"{delivery.waited_s:.1f} s after the kill", **details)


def survives_pool_process_kill(ctx) -> CheckResult:
    settings, body = _settings(ctx), _task_body(ctx)
    _prepare(ctx)
    # No job cut: the job the kill was aimed at ended first (it lasts rig.WORK_S; a machine this busy aimed
    # too late).
    delivery = _run_again_if(ctx, lambda d: d.killed == 0, rig.kill_pool_process, body, settings, ctx.dsn)
    details = delivery.summary()
    if delivery.killed == 0:
        raise Inconclusive("the pool process had finished its job before it was killed, twice; rerun the grader")
    problems = []
    if delivery.lost:
        if not settings.get("task_acks_late"):
            problems.append(
                f"{len(delivery.lost)} of {len(delivery.orders)} jobs were lost when the pool process running them "
                "was killed: with early acks (Celery's default) a task is acknowledged as soon as it starts — set "
                "\"task_acks_late\": True and \"task_reject_on_worker_lost\": True")
        elif not settings.get("task_reject_on_worker_lost"):
            problems.append(
                f"{len(delivery.lost)} of {len(delivery.orders)} jobs were lost when the pool process running "
                "them was killed: even with task_acks_late, Celery acknowledges a task whose pool process dies "
                "(WorkerLostError) — set \"task_reject_on_worker_lost\": True, so that it is requeued instead "
                "(the grader sets a long visibility timeout here: only the worker can bring the job back in time)")
        else:
            problems.append(f"{len(delivery.lost)} of {len(delivery.orders)} jobs were lost when a pool process was "
                            f"killed ({delivery.pending} still held by the broker after {delivery.waited_s:.0f} s)")
    problems += _effect_problems(delivery)
    if problems:
        return CheckResult.fail("; and ".join(problems), **details)
    return CheckResult.ok(f"the job of the killed pool process came back {delivery.waited_s:.1f} s later; all "
                          f"{len(delivery.orders)} orders completed once", **details)


# ------------------------------------------------------------------------------------------------
# Exercise 3 · a duplicate submission has one effect
# ------------------------------------------------------------------------------------------------

def duplicate_has_one_effect(ctx) -> CheckResult:
    body = _task_body(ctx)
    _prepare(ctx)
    # Not one copy reached process_order_once (the rig records a run before calling it): the worker, not the
    # task, failed (seen once in a batch of two gradings at a time).
    delivery = _run_again_if(ctx, lambda d: not sum(d.runs.values()), rig.submit_duplicates, body,
                             _reference_settings(ctx), ctx.dsn)
    if not sum(delivery.runs.values()):
        raise Inconclusive("the worker ran none of the 3 submitted copies, twice, so your task was never "
                           f"called: {delivery.notes[0] if delivery.notes else 'no outcome'}; rerun the grader")
    order = delivery.orders[0]
    emails, reports = delivery.emails.get(order, 0), delivery.reports.get(order, 0)
    details = delivery.summary()
    said = "the same order submitted 3 times (twice at the same instant, then once more)"
    if emails != 1:
        hint = IDEMPOTENT_HINT if emails > 1 else "send the email once (the first time the order is processed)"
        if emails > 1:
            hint += (". A check-then-send (SELECT, then INSERT) is not enough when two copies run at once: let a "
                     "unique key decide which one sends")
        return CheckResult.fail(f"{said} sent {_plural(emails, 'email')} to the customer: {hint}", **details)
    if reports != 1:
        return CheckResult.fail(f"{said} saved {_plural(reports, 'report')}: save it once, with an upsert", **details)
    if delivery.errors:
        return CheckResult.fail(
            f"{said}: one email and one report, but {_plural(len(delivery.errors), 'copy', 'copies')} failed "
            f"({_first_error(delivery)}): a duplicate should succeed quietly — save the report with INSERT … ON "
            "CONFLICT (order_id) DO NOTHING", **details)
    return CheckResult.ok(f"{said}: one email, one report, {sum(delivery.runs.values())} successful runs", **details)


LAB = LabSpec(
    id="08",
    title="Offload the slow work, and lose nothing",
    solution="08_celery_offload.ipynb",
    cell_timeout=180,
    total_timeout=600,
    namespace="perflab.topics.t08_offload.rig:NAMESPACE",
    needs_redis=True,
    exercises=[
        Exercise("offload", "Answer 202 and let a worker do the job", None, ["create_order", "process_order_once"], [
            Check("answers 202 with a task id; the job runs in the worker", answers_202, 1),
            Check(f"p50 under open-loop load at most {P50_FRACTION:g} of the inline version's", p50_under_load, 2),
        ]),
        Exercise("crash", "Exactly once, even when a worker is killed", None, ["WORKER_SETTINGS", "process_order_once"], [
            Check("kill -9 the worker mid-run: no job lost, no email twice", survives_worker_kill, 2),
            Check("kill -9 a pool process mid-job: its job comes back", survives_pool_process_kill, 1),
        ]),
        Exercise("duplicates", "A duplicate submission has one effect", None, ["process_order_once"], [
            Check("the same order submitted 3 times: one email, one report", duplicate_has_one_effect, 1),
        ]),
    ],
)
