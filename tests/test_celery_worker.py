"""The stack's Celery worker: started by one call with an app and an environment (the stack adds no variable
of a lesson's), runs real tasks, stops with its block, kill -9 leaves no pool process behind, and
`stack.down()` stops what is left. The workers here run topic 8's rig app (what early and late acks do
under kill -9 is tested through lab 08's checks, tests/test_lab08.py)."""
import contextlib

import time

import psutil
import pytest

from perflab import cli, paths, stack
from perflab.topics.t08_offload import rig


def quick_job(conn, order_id):
    """quick job"""
    send_confirmation_email(conn, order_id)  # noqa: F821 - the worker's namespace has it
    return {"order_id": order_id}


@pytest.fixture()
def jobs_db(scratch_db):
    rig.reset(scratch_db)
    return scratch_db


def _recorded() -> list[str]:
    return [w["name"] for w in stack.celery_workers()]


def test_worker_runs_tasks_and_stops_with_its_block(jobs_db):
    with rig.worker(quick_job, None, jobs_db, concurrency=2) as w:
        assert w.worker.alive() and w.worker.log_file.exists()
        assert w.worker.name in _recorded()
        assert w.client.send_task(rig.TASK_NAME, args=["job-1"]).get(timeout=20) == {"order_id": "job-1"}
        env = psutil.Process(w.worker.pid).environ()
        # What the worker was given, and nothing the stack made up for a lesson.
        assert env[rig.WORKER_ENV] == w.env[rig.WORKER_ENV] and str(paths.ROOT) in env["PYTHONPATH"]
        assert not [k for k in env if k.startswith("PERFLAB_CELERY")]
    assert not w.worker.alive()
    assert w.worker.name not in _recorded()
    assert not psutil.pid_exists(w.worker.pid) or psutil.Process(w.worker.pid).status() == psutil.STATUS_ZOMBIE


def test_kill_minus_nine_takes_the_pool_with_it(jobs_db):
    with rig.worker(quick_job, None, jobs_db, concurrency=2, pool="prefork") as w:
        pool = [child.pid for child in psutil.Process(w.worker.pid).children(recursive=True)]
        assert len(pool) >= 2, pool
        w.worker.kill()
        assert not w.worker.alive()

        def left() -> list[int]:
            found = []
            for pid in pool:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        found.append(pid)
                except psutil.NoSuchProcess:
                    pass
            return found

        deadline = time.monotonic() + 5  # SIGKILL is delivered at once, the exit a moment later on a busy machine
        while left() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left(), f"pool processes left running: {left()}"


def test_down_stops_leftover_workers_and_the_cli_lists_them(jobs_db, capsys, tmp_path, monkeypatch):
    # The workers recorded in a folder of this test's own: stopping "every recorded worker" must not stop
    # the workers of a lab or a notebook that another test process is running at the same time.
    monkeypatch.setattr(stack, "_celery_dir", lambda: tmp_path / "celery")
    with contextlib.ExitStack() as cleanup:
        w = cleanup.enter_context(rig.worker(quick_job, None, jobs_db, concurrency=1))
        assert cli.main(["stack", "workers"]) == 0
        assert w.worker.name in capsys.readouterr().out
        messages = stack.stop_celery_workers()  # what stack.down() does first
        assert any(w.worker.name in m and "stopped" in m for m in messages), messages
        assert not w.worker.alive()
        assert cli.main(["stack", "stop-workers"]) == 0
        assert "no Celery workers" in capsys.readouterr().out
