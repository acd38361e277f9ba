"""Lab 08's drivers: course code that runs *inside* a grading sandbox, next to a ``create_order`` answer.

The handler ``create_order(conn, celery_app, order_id)`` is learner code, so the web app around it (the
same :func:`rig.make_app` the notebook uses) runs in the sandbox: :func:`serve` starts it on a loopback
port in a thread of the sandbox process and returns its URL. Its psycopg connections log in as the
sandbox's own role (``DATABASE_URL``) and its Celery client sends to the sandbox's own Redis
(``REDIS_URL``), on the queue and key prefix the grader chose for the experiment (the worker that
consumes them is started and killed by the grader, in a jail of its own). The grader sends the HTTP
requests and times them from outside; it counts every effect in the database itself. Nothing here
counts or judges.
"""
from __future__ import annotations

import contextlib
import os

from perflab.topics.t08_offload import rig

_SERVING: dict = {}  # id of a slot's create_order -> the ExitStack that keeps its app running


def _key(answers) -> int:
    return id(answers.create_order)


def serve(answers, queue: str, prefix: str, web_threads: int = 4) -> str:
    """Serve the slot's ``create_order`` behind ``POST /orders/{order_id}``; returns the app's base URL."""
    from celery import Celery

    stop(answers)
    resources = contextlib.ExitStack()
    try:
        client = rig.configure(Celery("perflab.t08.client"), broker=os.environ["REDIS_URL"], queue=queue, prefix=prefix)
        resources.callback(client.close)
        app = rig.make_app(answers.create_order, client=client, dsn=os.environ["DATABASE_URL"], web_threads=web_threads)
        url = resources.enter_context(rig.serve(app))
    except BaseException:
        resources.close()
        raise
    _SERVING[_key(answers)] = resources
    return url


def stop(answers) -> None:
    """Stop the slot's app (if it runs)."""
    resources = _SERVING.pop(_key(answers), None)
    if resources is not None:
        resources.close()
