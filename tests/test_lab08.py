"""Lab 08's grader: passes the solution, fails the starter, fails an offload that loses tasks when the
worker is killed (early acks; late acks without reject_on_worker_lost) and a task that is not
idempotent — each on the check that names its fault.

The solution and the starter go through the whole grading run (a fresh kernel executes the notebook,
then real Celery workers run the checks). The faulty answers are the solution with one answer
replaced, judged by the one or two checks they are about, called directly (what the grader does after
executing a notebook): each of those costs seconds, not a notebook run.
"""
import ast
import textwrap
from pathlib import Path

import nbformat
import pytest

from labtools import outcomes as checks_by_name

from perflab import paths, stack
from perflab.topics.t07_caching import rig as caching
from perflab.grading import grader
from perflab.topics.t08_offload import offload
from perflab.grading.grader import GradingContext, RecordedFunction
from perflab.topics.t08_offload import checks as lab08

SOLUTION = paths.SOLUTIONS_DIR / "08_celery_offload.ipynb"
STARTER = paths.LABS_DIR / "08_celery_offload.ipynb"

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
    """No worker process and no broker key of the lab's survives a test."""
    yield
    leftovers = [w["name"] for w in stack.celery_workers() if w["name"].startswith("lab08-") and w["alive"]]
    client = stack.redis_client(course_stack.redis_url)
    keys = list(client.scan_iter(match=offload.KEY_PREFIX + "*", count=1000))
    if keys:
        client.delete(*keys)
    assert not leftovers, f"Celery workers left running: {leftovers}"
    assert not keys, f"broker keys left behind: {keys[:5]}"


def _solution_answers() -> dict:
    """The solution's answers as the grader records them: functions as source, values as values."""
    notebook = nbformat.read(SOLUTION, as_version=4)
    answers = {}
    for cell in notebook.cells:
        if cell.cell_type != "code" or "BEGIN SOLUTION" not in cell.source:
            continue
        tree = ast.parse(cell.source)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                source = textwrap.dedent(ast.get_source_segment(cell.source, node))
                answers[node.name] = RecordedFunction(node.name, source)
            elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                answers[node.targets[0].id] = ast.literal_eval(node.value)
    assert set(answers) >= {"process_order_once", "create_order", "WORKER_SETTINGS"}, answers.keys()
    return answers


def _judge(dsn: str, keys: list, **replaced) -> dict:
    """Run only the checks in ``keys`` on the solution's answers with ``replaced`` swapped in."""
    answers = _solution_answers()
    for name, value in replaced.items():
        answers[name] = RecordedFunction(name, textwrap.dedent(value).strip() + "\n") if isinstance(value, str) else value
    ctx = GradingContext(lab=lab08.LAB, submission=Path("08_variant.ipynb"), answers=answers, answer_errors={}, dsn=dsn)
    return {(exercise.name, check.name): grader._run_check(exercise, check, ctx)
            for exercise in lab08.LAB.exercises for check in exercise.checks
            if (exercise.name, check.name) in keys}




def test_solution_passes_every_check(tiny_data):
    report = grader.grade(SOLUTION)
    outcomes = checks_by_name(report)
    # Counted in the database: these must pass on any machine.
    for key in (OFFLOAD_202, WORKER_KILL, POOL_KILL, DUPLICATE):
        assert outcomes[key].status == "passed", report.text()
    # The one timed check may say "rerun" on a machine too busy to run the load on schedule, never "failed".
    assert outcomes[P50].status in ("passed", "inconclusive"), report.text()
    assert report.passed or report.status == "inconclusive", report.text()
    assert not report.notebook_notes, report.text()


def test_starter_fails_with_the_reasons(tiny_data, tmp_path):
    report = grader.grade(STARTER, out_dir=tmp_path)
    assert not report.passed and report.exit_code in (1, 3), report.text()
    outcomes = checks_by_name(report)
    assert outcomes[OFFLOAD_202].status == "failed" and "not 202" in outcomes[OFFLOAD_202].message
    assert outcomes[P50].status in ("failed", "inconclusive"), outcomes[P50].message
    killed = outcomes[WORKER_KILL]
    assert killed.status == "failed" and "lost" in killed.message and "task_acks_late" in killed.message, killed.message
    assert outcomes[POOL_KILL].status == "failed", outcomes[POOL_KILL].message
    duplicate = outcomes[DUPLICATE]
    assert duplicate.status == "failed" and "3 emails" in duplicate.message, duplicate.message
    assert (tmp_path / "results.json").exists()


def test_early_acks_lose_jobs_when_the_worker_is_killed(scratch_db):
    outcomes = _judge(scratch_db, [WORKER_KILL], WORKER_SETTINGS=EARLY_ACKS)
    killed = outcomes[WORKER_KILL]
    assert killed.status == "failed", killed.message
    assert "jobs were lost when the worker was killed" in killed.message and "task_acks_late" in killed.message
    assert killed.details["lost"] >= killed.details["runs cut short by the kill"] > 0, killed.details


def test_late_acks_without_reject_on_worker_lost_lose_a_killed_pool_process_job(scratch_db):
    outcomes = _judge(scratch_db, [POOL_KILL], WORKER_SETTINGS=LATE_ACKS_ONLY)
    pool = outcomes[POOL_KILL]
    assert pool.status == "failed" and "task_reject_on_worker_lost" in pool.message, pool.message


def test_a_task_that_is_not_idempotent_emails_twice(scratch_db):
    outcomes = _judge(scratch_db, [WORKER_KILL, DUPLICATE], process_order_once=NAIVE_TASK)
    killed = outcomes[WORKER_KILL]
    # Late acks brought every job back — and the redelivered ones sent their email again.
    assert killed.status == "failed" and killed.details["lost"] == 0, killed.message
    assert "email twice" in killed.message and "idempotent" in killed.message, killed.message
    duplicate = outcomes[DUPLICATE]
    assert duplicate.status == "failed" and "3 emails" in duplicate.message, duplicate.message
