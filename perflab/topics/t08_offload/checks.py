"""Lab 08 · Move the slow work off the request, and lose nothing — the grader's checks.

The submission is three answers: ``create_order(conn, celery_app, order_id)`` (the handler behind
``POST /orders/{order_id}``, returning ``(status, body)``), ``process_order_once(conn, order_id)``
(the job: email, report, save) and ``WORKER_SETTINGS`` (a dict of Celery settings). The grader
writes the learner's task body into a throwaway module registered as a Celery task
(:mod:`perflab.topics.t08_rig.rig`, which the notebook uses too), runs it in real ``celery worker`` processes on the course's Redis (its own
queue and key prefix) and counts every effect in its own copy of the database:

* **offload** — one order answers 202 with a task id, and the job runs in the worker; under an
  open-loop load (``RATE``/s for ``DURATION`` s, the same schedule in the same run), the endpoint's
  p50 is at most ``P50_FRACTION`` of the inline reference's and below half a job's duration, and
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

import json

from perflab import stack
from perflab.topics.t08_offload import rig
from perflab.grading.grader import Check, CheckResult, Exercise, Inconclusive, LabSpec, RecordedFunction, SubmissionError

RATE = 20  # orders per second, open loop: more than the inline endpoint's 4 threads can finish (16/s)
DURATION = 2.0
P50_FRACTION = 0.2  # the endpoint's p50 under load, as a share of the inline version's (same run)
P50_BOUND_MS = rig.WORK_S * 1000 / 2  # below half a job: the response did not wait for the work
MAX_LATE_SEND_MS = 250  # the load generator's own lag beyond this: the machine is too busy to judge
JOBS = 12
MIN_VISIBILITY_S = 1.0

# What the learner's functions may use without importing (the lab says so); the worker has the same names.
NAMESPACE = rig.job_namespace()

IDEMPOTENT_HINT = ("Make process_order_once idempotent: claim the order's dedupe key (INSERT INTO email_claims "
                   "(order_id) VALUES (%s) ON CONFLICT DO NOTHING RETURNING order_id) in the same transaction "
                   "as the email, send only if the claim returned a row, and save the report with an upsert "
                   "(ON CONFLICT (order_id) DO NOTHING)")


def _task_body(ctx) -> str:
    """The learner's process_order_once as source (checked here first: a broken one fails here)."""
    ctx.function("process_order_once", NAMESPACE)  # raises SubmissionError if it cannot be re-created
    return ctx.answers["process_order_once"].source


def _handler(ctx):
    task = ctx.function("process_order_once", NAMESPACE)
    return ctx.function("create_order", {**NAMESPACE, "process_order_once": task})


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


def _run(experiment, *args, **kwargs):
    """An experiment; a worker that cannot start or run the task is the submission's fault."""
    try:
        return experiment(*args, **kwargs)
    except (SubmissionError, Inconclusive):
        raise
    except (stack.StackError, RuntimeError) as exc:
        raise SubmissionError(f"the worker could not run your task: {exc}") from None


def _first_error(delivery) -> str:
    order, error = delivery.errors[0]
    return f"order {order}: {error.splitlines()[0]}"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


# ------------------------------------------------------------------------------------------------
# Exercise 1 · the endpoint answers 202 and the worker does the job
# ------------------------------------------------------------------------------------------------

def answers_202(ctx) -> CheckResult:
    handler, body = _handler(ctx), _task_body(ctx)
    one = _run(rig.one_order, handler, body, ctx.dsn)
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
    if one.state != "SUCCESS" or not one.ran_in_worker:
        return CheckResult.fail(
            f"the task {one.body['task_id']} ended in state {one.state} and the job "
            f"{'ran' if one.ran_in_worker else 'did not run'} in the worker: send the task named TASK_NAME "
            f"({rig.TASK_NAME!r}) with args=[order_id]")
    return CheckResult.ok(f"202 in {one.answered_ms:.0f} ms with a task id; GET /tasks/<id> reached SUCCESS "
                          "and the job ran in the worker")


def p50_under_load(ctx) -> CheckResult:
    handler, body = _handler(ctx), _task_body(ctx)
    run = _run(rig.endpoint_under_load, {"inline (reference)": rig.inline_reference, "your create_order": handler},
               body, ctx.dsn, rate=RATE, duration=DURATION)
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
    delivery = _run(rig.kill_worker_mid_run, body, settings, ctx.dsn, jobs=JOBS)
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
    delivery = _run(rig.kill_pool_process, body, settings, ctx.dsn)
    details = delivery.summary()
    if delivery.killed == 0:
        raise Inconclusive("the pool process had finished its job before it was killed; rerun")
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
    delivery = _run(rig.submit_duplicates, body, rig.LATE_ACKS, ctx.dsn)
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
