"""Lab 08's own diagnoses: the starter fails each check with its reason, and answers that lose jobs when
the worker is killed (early acks; late acks without reject_on_worker_lost) or email twice (a job that is
not idempotent) fail on the check that names their fault. The solution passing and the starter failing
are tests/test_labs.py's; the faulty answers are judged by the one or two checks they are about, called
directly (seconds each, not a notebook run)."""
import pytest

from labtools import SLOW, TIMED, expect, fails, graded, judge, passes

from perflab import stack
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


@pytest.fixture(autouse=True)
def nothing_left_behind(course_stack):
    """No worker process and no broker key of the topic's survives a test."""
    yield
    leftovers = [w["name"] for w in stack.celery_workers() if w["name"].startswith("t08-") and w["alive"]]
    client = stack.redis_client(course_stack.redis_url)
    keys = list(client.scan_iter(match=rig.KEY_PREFIX + "*", count=1000))
    if keys:
        client.delete(*keys)
    assert not leftovers, f"Celery workers left running: {leftovers}"
    assert not keys, f"broker keys left behind: {keys[:5]}"


def test_the_solution_passes_every_counted_check(tiny_data):
    # Counted in the database: these pass on any machine; only the p50 may say "rerun".
    report = graded("08", "solution")
    expect(report, {OFFLOAD_202: passes(), WORKER_KILL: passes(), POOL_KILL: passes(), DUPLICATE: passes(), P50: TIMED})
    assert not report.notebook_notes, report.text()  # every self-check cell ran under the grader too


def test_the_starter_fails_with_the_reasons(tiny_data):
    expect(graded("08", "starter"), {
        OFFLOAD_202: fails("not 202"), P50: SLOW, WORKER_KILL: fails("lost", "task_acks_late"),
        POOL_KILL: fails(), DUPLICATE: fails("3 emails"),
    })


def test_early_acks_lose_jobs_when_the_worker_is_killed(scratch_db):
    killed = expect(judge("08", scratch_db, [WORKER_KILL], WORKER_SETTINGS=EARLY_ACKS), {
        WORKER_KILL: fails("jobs were lost when the worker was killed", "task_acks_late")})[WORKER_KILL]
    assert killed.details["lost"] >= killed.details["runs cut short by the kill"] > 0, killed.details


def test_late_acks_without_reject_on_worker_lost_lose_a_killed_pool_process_job(scratch_db):
    expect(judge("08", scratch_db, [POOL_KILL], WORKER_SETTINGS=LATE_ACKS_ONLY),
           {POOL_KILL: fails("task_reject_on_worker_lost")})


def test_a_task_that_is_not_idempotent_emails_twice(scratch_db):
    judged = expect(judge("08", scratch_db, [WORKER_KILL, DUPLICATE], process_order_once=NAIVE_TASK), {
        WORKER_KILL: fails("email twice", "idempotent"), DUPLICATE: fails("3 emails")})
    # Late acks brought every job back — and the redelivered ones sent their email again.
    assert judged[WORKER_KILL].details["lost"] == 0, judged[WORKER_KILL].message
