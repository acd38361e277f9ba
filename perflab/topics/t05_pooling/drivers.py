"""Lab 05's drivers: course code that runs INSIDE a grading sandbox (never in the grader's process).

Each driver receives that side's answers first (``answers.open_app``: the learner's, the solution
notebook's reference, or the starter) and JSON arguments; it returns JSON. An application opened by
`open_app` stays open in this process (``_APPS``, by the name the grader gives it) until `close_app`,
so the grader can count, from outside, what the server sees between the calls: connections and
statements in the server's log, backends and their states in ``pg_stat_activity`` (by role).

The database is the sandbox's own: ``DATABASE_URL`` logs in as this sandbox's role on its own clone.
Nothing here measures time or counts connections: those numbers are the grader's.
"""
from __future__ import annotations

import os
import threading
import time

_APPS: dict[str, tuple] = {}


def _dsn() -> str:
    return os.environ["DATABASE_URL"]


def open_app(answers, name: str) -> None:
    """``answers.open_app(DATABASE_URL)``, kept as ``name`` until `close_app`."""
    if name in _APPS:
        raise RuntimeError(f"an application named {name!r} is already open")
    app = answers.open_app(_dsn())
    if not (isinstance(app, (tuple, list)) and len(app) == 2 and all(callable(f) for f in app)):
        raise TypeError(f"open_app(dsn) should return (handle, close), two functions; it returned {app!r:.200}")
    _APPS[name] = (app[0], app[1])


def handle(answers, name: str, customers: list) -> list:
    """``handle(c)`` for each customer in turn (one timed call can hold several requests): the rows."""
    handle_one = _APPS[name][0]
    return [handle_one(customer) for customer in customers]


def burst(answers, name: str, customers: list, threads: int, timeout: float) -> dict:
    """The requests sent from ``threads`` daemon threads at once: each answer (None if it failed or never
    finished), each error, and how many were still waiting after ``timeout`` seconds."""
    handle_one = _APPS[name][0]
    answers_by_index: dict[int, object] = {}
    errors: dict[int, str] = {}
    indexes = iter(range(len(customers)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                i = next(indexes, None)
            if i is None:
                return
            try:
                answers_by_index[i] = handle_one(customers[i])
            except BaseException as exc:  # noqa: BLE001 - reported to the grader
                text = str(exc).strip().splitlines()
                errors[i] = f"{type(exc).__name__}: {text[0][:300] if text else ''}"

    workers = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join(max(0.0, timeout - (time.monotonic() - started)))
    done = dict(answers_by_index)
    failed = dict(errors)
    return {
        "answers": [done.get(i) for i in range(len(customers))],
        "finished": [i in done for i in range(len(customers))],
        "errors": sorted([i, message] for i, message in failed.items()),
        "unfinished": len(customers) - len(done) - len(failed),
    }


def close_app(answers, name: str) -> None:
    """The application's own ``close()``; forgotten here whether it succeeds or not."""
    _handle, close = _APPS.pop(name)
    close()
