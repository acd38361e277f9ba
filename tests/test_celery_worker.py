"""The stack's Celery worker: started by one call, runs real tasks, kill -9 leaves nothing behind,
late acks redeliver what a killed worker was running, and `stack.down()` stops what is left."""
import secrets
import time

import psutil
import psycopg
import pytest

from perflab import cli, stack
from perflab.topics.t08_offload import tasks



@pytest.fixture(autouse=True)
def no_keys_left_behind(course_stack):
    """The tests' broker and result keys all start with perflab:test:; delete them afterwards."""
    yield
    from perflab.topics.t07_caching import rig as caching

    client = stack.redis_client(course_stack.redis_url)
    keys = list(client.scan_iter(match="perflab:test:*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture()
def jobs_db(scratch_db):
    tasks.reset(scratch_db)
    return scratch_db


def _count(dsn, sql):
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchone()[0]


def test_worker_runs_tasks_and_stops_with_its_block(jobs_db):
    prefix, queue = f"perflab:test:{secrets.token_hex(3)}:", f"q-{secrets.token_hex(3)}"
    client = tasks.client(queue=queue, prefix=prefix)
    env = {"PERFLAB_JOBS_DSN": jobs_db, "PERFLAB_WORK_SECONDS": "0.01"}
    with stack.celery_worker("perflab.topics.t08_offload.tasks", queue=queue, prefix=prefix, concurrency=2, env=env) as worker:
        assert worker.alive() and worker.log_file.exists()
        assert [w["name"] for w in stack.celery_workers()] == [worker.name] or worker.name in [
            w["name"] for w in stack.celery_workers()]
        result = client.send_task("perflab.process_order", args=("job-1", True))
        assert result.get(timeout=20) == {"job_id": "job-1", "email_sent": True}
    assert not worker.alive()
    assert worker.name not in [w["name"] for w in stack.celery_workers()]
    assert not psutil.pid_exists(worker.pid) or psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE


def test_kill_minus_nine_loses_early_acked_tasks_and_late_acks_redeliver_them(jobs_db):
    prefix = f"perflab:test:{secrets.token_hex(3)}:"
    env = {"PERFLAB_JOBS_DSN": jobs_db, "PERFLAB_WORK_SECONDS": "0.6"}
    completed = {}
    for acks_late in (False, True):
        tasks.reset(jobs_db)
        queue = f"q-{secrets.token_hex(3)}"
        client = tasks.client(queue=queue, prefix=prefix)
        with stack.celery_worker("perflab.topics.t08_offload.tasks", queue=queue, prefix=prefix, concurrency=2, acks_late=acks_late,
                                 env=env) as doomed:
            for i in range(4):
                client.send_task("perflab.process_order", args=(f"job-{i}", True))
            deadline = time.monotonic() + 20
            while _count(jobs_db, "SELECT count(*) FROM task_runs") < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            doomed.kill()
            assert not doomed.alive()
        started = time.monotonic()
        with stack.celery_worker("perflab.topics.t08_offload.tasks", queue=queue, prefix=prefix, concurrency=2, acks_late=acks_late,
                                 env=env):
            while (_count(jobs_db, "SELECT count(*) FROM reports") < 4
                   and time.monotonic() - started < tasks.VISIBILITY_TIMEOUT_S + 6):
                time.sleep(0.1)
        completed[acks_late] = _count(jobs_db, "SELECT count(*) FROM reports")
        # idempotent jobs: a redelivered job sends no second email
        assert _count(jobs_db, "SELECT count(*) FROM emails_sent") == _count(jobs_db, "SELECT count(DISTINCT job_id) FROM emails_sent")
    assert completed[False] == 2, "with early acks the two running jobs should be lost"
    assert completed[True] == 4, "with late acks every job should complete"


def test_down_stops_leftover_workers_and_the_cli_lists_them(jobs_db, capsys):
    prefix, queue = f"perflab:test:{secrets.token_hex(3)}:", f"q-{secrets.token_hex(3)}"
    worker = stack.start_celery_worker("perflab.topics.t08_offload.tasks", queue=queue, prefix=prefix, concurrency=1,
                                       env={"PERFLAB_JOBS_DSN": jobs_db})
    try:
        assert cli.main(["stack", "workers"]) == 0
        assert worker.name in capsys.readouterr().out
        messages = stack.stop_celery_workers()  # what stack.down() does first
        assert any(worker.name in m and "stopped" in m for m in messages), messages
        assert not worker.alive()
        assert cli.main(["stack", "stop-workers"]) == 0
        assert "no Celery workers" in capsys.readouterr().out
    finally:
        worker.stop(timeout=2)
