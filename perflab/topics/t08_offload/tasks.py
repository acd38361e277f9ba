"""The course's Celery app for topic 8: slow work moved off the request, and made safe to run twice.

A worker for it is started by the stack (``stack.celery_worker("perflab.topics.t08_offload.tasks", queue=..., acks_late=...)``),
which passes its configuration in environment variables; the notebook process builds the same app
with :func:`configure` so that ``.delay()`` reaches that worker.

The job is the article's example — an order that needs a confirmation email and a report:

1. send the confirmation email (the effect a customer sees twice if the job runs twice),
2. build the report (the slow part: ``PERFLAB_WORK_SECONDS``, 2.5 s in the article, scaled down),
3. save the report (an upsert: running it twice leaves one row).

``process_order(job_id, idempotent=False)`` sends the email every time it runs; with
``idempotent=True`` it first claims the job's dedupe key (``INSERT … ON CONFLICT DO NOTHING``) in the
same transaction as the email, so a second run — a redelivery after a crash, or a duplicate
submission — sends nothing. Every run is also logged in ``task_runs`` (start and end), which is how a
lesson counts executions, measures throughput and sees a run cut short by ``kill -9``.

``flaky_call(job_id, failures)`` fails ``failures`` times (a dependency that is down) and is retried
by Celery with exponential backoff; each attempt is logged in ``task_attempts``.
"""
from __future__ import annotations

import os
import socket
import threading
import time

from celery import Celery

# A short visibility timeout, for the lessons only. With the Redis broker an unacknowledged message
# (acks_late, worker killed) is handed out again only once it has been unacked this long; the default
# is an hour. It must stay longer than any task runs (plus its wait in the worker's prefetch buffer),
# or a healthy long task would be delivered twice.
VISIBILITY_TIMEOUT_S = 4
DEFAULT_WORK_SECONDS = 0.25

SCHEMA = """
CREATE TABLE IF NOT EXISTS emails_sent (id bigserial PRIMARY KEY, job_id text NOT NULL, sent_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS email_dedupe (job_id text PRIMARY KEY);
CREATE TABLE IF NOT EXISTS reports (job_id text PRIMARY KEY, worker text NOT NULL, finished_at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS task_runs (id bigserial PRIMARY KEY, job_id text NOT NULL, worker text NOT NULL, pid int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz);
CREATE TABLE IF NOT EXISTS task_attempts (id bigserial PRIMARY KEY, job_id text NOT NULL, attempt int NOT NULL,
    ok boolean NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
"""


def ensure_schema(dsn: str) -> None:
    """Create the tables the jobs write to."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


def reset(dsn: str) -> None:
    from perflab import datasets

    datasets.create_and_empty(dsn, SCHEMA, "emails_sent, email_dedupe, reports, task_runs, task_attempts")


def configure(app: Celery, *, broker: str | None = None, queue: str | None = None, prefix: str | None = None,
              acks_late: bool | None = None) -> Celery:
    """Point ``app`` at the stack's Redis (broker and result backend), from arguments or the environment."""
    env = os.environ
    broker = broker or env.get("PERFLAB_CELERY_BROKER")
    if not broker:
        from perflab import stack

        broker = stack.ensure().redis_url
    prefix = prefix or env.get("PERFLAB_CELERY_PREFIX") or "perflab:celery:"
    queue = queue or env.get("PERFLAB_CELERY_QUEUE") or "perflab"
    if acks_late is None:
        acks_late = env.get("PERFLAB_CELERY_ACKS_LATE") == "1"
    transport = {
        "visibility_timeout": VISIBILITY_TIMEOUT_S,
        "global_keyprefix": prefix,  # every broker key of this run under its own prefix
        # look for abandoned messages every second (defaults: every 10 s x 10), so a redelivery
        # happens VISIBILITY_TIMEOUT_S after a crash, not minutes later
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 10,
    }
    app.conf.update(
        broker_url=broker,
        result_backend=broker,
        broker_transport_options=transport,
        result_backend_transport_options={"global_keyprefix": prefix},
        task_default_queue=queue,
        task_acks_late=acks_late,
        # acks_late alone does not cover a pool process that dies mid-task: that task is marked
        # failed (WorkerLostError) and acked. With this, it is rejected and requeued instead.
        task_reject_on_worker_lost=acks_late,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )
    return app


app = configure(Celery("perflab.tasks"))


def client(*, queue: str, prefix: str, broker: str | None = None) -> Celery:
    """A fresh app for the sending side of one experiment (``.send_task`` by name, ``.AsyncResult``).

    A new app per queue/prefix, because an app that has already connected keeps its connection pool
    (and the key prefix it was built with) even if its configuration changes later.
    """
    return configure(Celery("perflab.client"), broker=broker, queue=queue, prefix=prefix, acks_late=False)

_local = threading.local()


def _conn():
    """One connection per worker thread, to the database named by PERFLAB_JOBS_DSN."""
    import psycopg

    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["PERFLAB_JOBS_DSN"], autocommit=True)
        _local.conn = conn
    return conn


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def work_seconds() -> float:
    return float(os.environ.get("PERFLAB_WORK_SECONDS", DEFAULT_WORK_SECONDS))


def build_report(job_id: str) -> None:
    """The slow part (the article's ~2.5 s of report work), scaled down for the lessons."""
    time.sleep(work_seconds())


def send_confirmation_email(conn, job_id: str, idempotent: bool) -> bool:
    """Returns True when an email went out. The idempotent path claims the dedupe key first, in the
    same transaction, so two runs (or two submissions) of one job send one email."""
    with conn.transaction():
        if idempotent:
            claimed = conn.execute("INSERT INTO email_dedupe (job_id) VALUES (%s) ON CONFLICT DO NOTHING "
                                   "RETURNING job_id", (job_id,)).fetchone()
            if claimed is None:
                return False
        conn.execute("INSERT INTO emails_sent (job_id) VALUES (%s)", (job_id,))
    return True


def run_order_job(job_id: str, idempotent: bool) -> dict:
    """The whole job, as a worker runs it (also what an inline endpoint runs in the request)."""
    conn = _conn()
    run_id = conn.execute("INSERT INTO task_runs (job_id, worker, pid) VALUES (%s, %s, %s) RETURNING id",
                          (job_id, _worker_name(), os.getpid())).fetchone()[0]
    sent = send_confirmation_email(conn, job_id, idempotent)
    build_report(job_id)
    conn.execute("INSERT INTO reports (job_id, worker) VALUES (%s, %s) ON CONFLICT (job_id) DO NOTHING",
                 (job_id, _worker_name()))
    conn.execute("UPDATE task_runs SET finished_at = clock_timestamp() WHERE id = %s", (run_id,))
    return {"job_id": job_id, "email_sent": sent}


@app.task(name="perflab.process_order")
def process_order(job_id: str, idempotent: bool = False) -> dict:
    return run_order_job(job_id, idempotent)


class FlakyDependencyError(ConnectionError):
    """The payment provider (or mail server) did not answer."""


# retry_backoff is a whole number of seconds (Celery rounds the countdown): 1 s, 2 s, 4 s, ...
# retry_jitter is off only so that the lesson's table shows the doubling; leave it on in production.
@app.task(name="perflab.flaky_call", bind=True, autoretry_for=(FlakyDependencyError,), retry_backoff=1,
          retry_backoff_max=8, retry_jitter=False, max_retries=5)
def flaky_call(self, job_id: str, failures: int) -> dict:
    """Fails the first ``failures`` attempts; Celery retries it after 1 s, 2 s, 4 s, … (backoff)."""
    attempt = self.request.retries + 1
    ok = attempt > failures
    _conn().execute("INSERT INTO task_attempts (job_id, attempt, ok) VALUES (%s, %s, %s)", (job_id, attempt, ok))
    if not ok:
        raise FlakyDependencyError(f"attempt {attempt}: the dependency is down")
    return {"job_id": job_id, "attempts": attempt}
