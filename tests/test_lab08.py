"""Lab 08's own diagnoses: the untouched starter scores 0; the starter's answers (edited, so that they are
graded) fail each check with its reason; answers that lose jobs when the worker is killed (early acks; late
acks without reject_on_worker_lost) or email twice (a job that is not idempotent) fail on the check that
names their fault; a job that tries to hide a second email (deleting it, or replacing the grader's table)
cannot. The solution passing and the starter failing are tests/test_labs.py's; the other answers are judged
by the one or two checks they are about, called directly on a grading context (the grader's own sandboxes
and jailed workers, no notebook run).
"""
import contextlib
import os
import textwrap
from pathlib import Path

import psutil
import pytest

from labtools import SLOW, TIMED, Expected, expect, fails, graded, passes, solution_answers

from perflab import stack
from perflab.grading import grader, isolation
from perflab.grading.grader import GradingContext, RecordedFunction
from perflab.topics.t08_offload import rig

OFFLOAD_202 = ("offload", "answers 202 with a task id; the job runs in the worker")
P50 = ("offload", "p50 under open-loop load at most 0.2 of the inline version's")
WORKER_KILL = ("crash", "kill -9 the worker mid-run: no job lost, no email twice")
POOL_KILL = ("crash", "kill -9 a pool process mid-job: its job comes back")
DUPLICATE = ("duplicates", "the same order submitted 3 times: one email, one report")

NAIVE_TASK = '''
def process_order_once(conn, order_id):
    send_confirmation_email(conn, order_id)
    report = build_report(order_id)
    conn.execute("INSERT INTO order_reports (order_id, body) VALUES (%s, %s) ON CONFLICT (order_id) DO NOTHING",
                 (order_id, report))
'''
EARLY_ACKS = {"task_reject_on_worker_lost": True, "broker_transport_options": {"visibility_timeout": 4}}
LATE_ACKS_ONLY = {"task_acks_late": True, "broker_transport_options": {"visibility_timeout": 4}}


def judge(checks: list, **replaced) -> dict:
    """Only ``checks`` on the solution's answers with ``replaced`` swapped in (source text for a function,
    else the value), in the grader's sandboxes, as grade() runs them after the notebook."""
    spec = grader.load_lab("08")
    answers = solution_answers("08")
    for name, value in replaced.items():
        answers[name] = RecordedFunction(name, textwrap.dedent(value).strip() + "\n") if isinstance(value, str) else value
    with contextlib.ExitStack() as resources:
        ctx = GradingContext(lab=spec, submission=Path("08_variant.ipynb"), answers=answers, answer_errors={},
                             _resources=resources)
        return {(exercise.name, check.name): grader._run_check(exercise, check, ctx)
                for exercise in spec.exercises for check in exercise.checks if (exercise.name, check.name) in checks}


def _workers_alive() -> list[int]:
    """Topic-8 worker processes of this test run's gradings (their database role names this process), alive."""
    mine = f"{isolation.PREFIX}{os.getpid()}_"
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if rig.WORKER_APP in " ".join(proc.info["cmdline"] or []) and \
                    mine in proc.environ().get("DATABASE_URL", "") and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.info["pid"])
    return found


def _started_here(starter: int | None) -> bool:
    """A worker this process (or one of its sandboxes, now gone) started; not one of a notebook's kernel
    running in another test process at the same time (`make test` runs files in parallel)."""
    if starter is None or starter == os.getpid() or not stack._pid_alive(starter):
        return True
    return starter in {child.pid for child in psutil.Process().children(recursive=True)}


def _key_owner(key: bytes) -> int | None:
    owner = key.decode(errors="replace")[len(rig.KEY_PREFIX):].split(":", 1)[0]
    return int(owner) if owner.isdigit() else None


@pytest.fixture(autouse=True)
def nothing_left_behind(course_stack):
    """No worker process and no broker key of the topic's survives a test."""
    yield
    leftovers = [w["name"] for w in stack.celery_workers()
                 if w["name"].startswith("t08-") and w["alive"] and _started_here(w.get("starter"))]
    client = stack.redis_client(course_stack.redis_url)
    # Keys are named after the process that made them: a notebook's kernel in another test process may be
    # using its own meanwhile (left alone); this process's, its sandboxes' and dead processes' are checked.
    keys = [key for key in client.scan_iter(match=rig.KEY_PREFIX + "*", count=1000)
            if _started_here(_key_owner(key))]
    if keys:
        client.delete(*keys)
    assert not leftovers, f"Celery workers left running: {leftovers}"
    assert not keys, f"broker keys left behind: {keys[:5]}"
    assert not _workers_alive(), f"topic-8 worker processes left running: {_workers_alive()}"


def test_the_solution_passes_every_counted_check(tiny_data):
    # Counted in the database: these pass on any machine; only the p50 may say "rerun".
    report = graded("08", "solution")
    expect(report, {OFFLOAD_202: passes(), WORKER_KILL: passes(), POOL_KILL: passes(), DUPLICATE: passes(), P50: TIMED})
    assert not report.notebook_notes, report.text()  # every self-check cell ran under the grader too


def test_the_untouched_starter_scores_zero(tiny_data):
    report = graded("08", "starter")
    expect(report, {OFFLOAD_202: fails("still the starter code"), P50: fails(), WORKER_KILL: fails(),
                    POOL_KILL: fails(), DUPLICATE: fails()})
    assert report.score == 0


STARTER_HANDLER = '''
def create_order(conn, celery_app, order_id):
    """The starter's handler, written again: the whole job while the client waits."""
    process_order_once(conn, order_id)
    return 200, {"order_id": order_id, "status": "done"}
'''
STARTER_TASK = '''
def process_order_once(conn, order_id):
    """The starter's job, written again."""
    send_confirmation_email(conn, order_id)
    report = build_report(order_id)
    conn.execute("INSERT INTO order_reports (order_id, body) VALUES (%s, %s)", (order_id, report))
    return {"order_id": order_id}
'''


def test_the_starters_answers_fail_with_the_reasons(tiny_data):
    judged = judge([OFFLOAD_202, P50, WORKER_KILL, POOL_KILL, DUPLICATE], create_order=STARTER_HANDLER,
                   process_order_once=STARTER_TASK, WORKER_SETTINGS={})
    expect(judged, {OFFLOAD_202: fails("not 202", "did the whole job in the request"), P50: SLOW,
                    WORKER_KILL: fails("lost", "task_acks_late"), POOL_KILL: fails(), DUPLICATE: fails("3 emails")})


def test_early_acks_lose_jobs_when_the_worker_is_killed(tiny_data):
    killed = expect(judge([WORKER_KILL], WORKER_SETTINGS=EARLY_ACKS), {
        WORKER_KILL: fails("jobs were lost when the worker was killed", "task_acks_late")})[WORKER_KILL]
    assert killed.details["lost"] >= killed.details["runs cut short by the kill"] > 0, killed.details


def test_late_acks_without_reject_on_worker_lost_lose_a_killed_pool_process_job(tiny_data):
    expect(judge([POOL_KILL], WORKER_SETTINGS=LATE_ACKS_ONLY), {POOL_KILL: fails("task_reject_on_worker_lost")})


def test_a_task_that_is_not_idempotent_emails_twice(tiny_data):
    judged = expect(judge([WORKER_KILL, DUPLICATE], process_order_once=NAIVE_TASK), {
        WORKER_KILL: fails("email twice", "idempotent"), DUPLICATE: fails("3 emails")})
    # Late acks brought every job back — and the redelivered ones sent their email again.
    assert judged[WORKER_KILL].details["lost"] == 0, judged[WORKER_KILL].message


def test_a_sent_email_cannot_be_taken_back(tiny_data):
    """Deleting the extra emails afterwards is refused (the role may only add rows to order_emails)."""
    hiding = NAIVE_TASK + '''
    conn.execute("DELETE FROM order_emails WHERE order_id = %s AND id > (SELECT min(id) FROM order_emails "
                 "WHERE order_id = %s)", (order_id, order_id))
'''
    expect(judge([DUPLICATE], process_order_once=hiding), {DUPLICATE: fails("3 emails")})


def test_replacing_the_graders_table_is_caught(tiny_data):
    """The role owns the schema, so it can drop the grader's table and make its own: the grader notices."""
    replacing = '''
def process_order_once(conn, order_id):
    conn.execute("DROP TABLE IF EXISTS order_emails CASCADE")
    conn.execute("CREATE TABLE IF NOT EXISTS order_emails (id bigserial PRIMARY KEY, order_id text NOT NULL, "
                 "sent_at timestamptz NOT NULL DEFAULT clock_timestamp())")
    conn.execute("INSERT INTO order_emails (order_id) VALUES (%s)", (order_id,))
    conn.execute("INSERT INTO order_reports (order_id, body) VALUES (%s, %s) ON CONFLICT (order_id) DO NOTHING",
                 (order_id, build_report(order_id)))
'''
    expect(judge([DUPLICATE], process_order_once=replacing), {DUPLICATE: fails("dropped or replaced")})


def test_a_worker_that_runs_no_copy_is_inconclusive_not_a_failure(tiny_data, monkeypatch):
    """Not one copy reached the task (a batch of two gradings at a time once had its worker run none): that
    says nothing of the answer. Tried once more, then "rerun", with how the copies ended; never "0 emails"."""
    tries = []

    def no_copy_ran(*args, **kwargs):
        tries.append(1)
        return rig.Delivery("the same order submitted 3 times", ["order-42"], emails={}, reports={}, runs={},
                            errors=[], notes=["the copies ended: FAILURE: WorkerLostError('gone')"])

    monkeypatch.setattr(rig, "submit_duplicates", no_copy_ran)
    expect(judge([DUPLICATE]), {DUPLICATE: Expected(frozenset({"inconclusive"}),
                                                    ("none of the 3 submitted copies", "WorkerLostError"))})
    assert len(tries) == 2
