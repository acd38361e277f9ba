"""Lab 11's drivers: course code that runs *inside* a grading sandbox, next to an ``open_router`` answer.

The grader never calls a router in its own process. It sends small JSON calls to the sandbox (the learner's,
or the reference sandbox, where the solution notebook's router and the starter's live in two slots), and
these drivers do the part that cannot cross a pipe:

* :func:`open_router` builds the two DSNs *on the sandbox's side*: the primary is ``DATABASE_URL`` (the
  sandbox's own role, on its own clone of the course data) with ``synchronous_commit = on``; the replica is
  the same role and database on the streaming replica, whose port the grader passes (roles and databases
  are replicated, so the role logs in there with the same password). It is also put in
  ``PERFLAB_REPLICA_URL``, where :mod:`perflab.stack` looks for a replica of its own.
* :func:`route` keeps each session's dict here (a session is a name the grader chooses; the router keeps
  what it needs in its dict across calls) and runs one write or one read of the lab's two statements.
  What a read returns goes back to the grader, which decides whether it is stale.
* :func:`cycle` is the unit the overhead check times: a fresh session's write and ``reads`` reads.

Nothing here counts or judges: where the reads went is counted by the servers, staleness by the grader.
State (the open routers, the sessions) lives in a module-level dict, one entry per answer slot.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from perflab import stack
from perflab.topics.t11_scaling import rig

REPLICA_URL_ENV = "PERFLAB_REPLICA_URL"
_ROUTERS: dict = {}  # id of a slot's open_router -> {"route", "close", "sessions"}


def _key(answers) -> int:
    return id(answers.open_router)


def replica_dsn(port: int, primary_dsn: str | None = None) -> str:
    """``primary_dsn`` (default: ``DATABASE_URL``) pointed at the replica's ``port``: same role, password, database."""
    parts = urlsplit(primary_dsn or os.environ["DATABASE_URL"])
    userinfo, _, _ = parts.netloc.rpartition("@")
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    netloc = (f"{userinfo}@" if userinfo else "") + f"{host}:{int(port)}"
    return urlunsplit(parts._replace(netloc=netloc))


def _close(key: int) -> None:
    entry = _ROUTERS.pop(key, None)
    if entry is not None:
        entry["close"]()


def open_router(answers, replica_port: int) -> None:
    """Open the slot's router on this sandbox's role: ``open_router(primary_dsn, replica_dsn)``."""
    key = _key(answers)
    _close(key)
    primary = stack.with_params(os.environ["DATABASE_URL"], options="-c synchronous_commit=on")
    replica = replica_dsn(replica_port)
    os.environ[REPLICA_URL_ENV] = replica
    opened = answers.open_router(primary, replica)
    if not (isinstance(opened, (tuple, list)) and len(opened) == 2 and all(callable(f) for f in opened)):
        raise TypeError(f"open_router(primary_dsn, replica_dsn) should return (route, close), two functions; "
                        f"it returned {opened!r}"[:300])
    _ROUTERS[key] = {"route": opened[0], "close": opened[1], "sessions": {}}


def _router(answers) -> dict:
    entry = _ROUTERS.get(_key(answers))
    if entry is None:
        raise RuntimeError("the router is not open (open_router was not called, or it failed)")
    return entry


def route(answers, session: str, op: str, params: list):
    """One statement through the router: ``op`` is ``"write"`` (set a display name) or ``"read"`` (read it).

    Returns a read's rows as they came back (the grader judges them); a write returns None."""
    entry = _router(answers)
    state = entry["sessions"].setdefault(session, {})
    if op == "write":
        entry["route"](state, rig.UPDATE_NAME_SQL, tuple(params), write=True)
        return None
    if op == "read":
        return entry["route"](state, rig.READ_NAME_SQL, tuple(params))
    raise ValueError(f"unknown op {op!r}")


def cycle(answers, user_id: int, name: str, reads: int) -> None:
    """A fresh session writes ``name`` for ``user_id``, then reads it ``reads`` times (the timed unit)."""
    entry = _router(answers)
    session: dict = {}
    entry["route"](session, rig.UPDATE_NAME_SQL, (name, user_id), write=True)
    for _ in range(reads):
        entry["route"](session, rig.READ_NAME_SQL, (user_id,))
    return None


def close_router(answers) -> None:
    """``close()`` of the slot's router."""
    _close(_key(answers))
