"""Lab 10's drivers: course code that runs INSIDE a grading sandbox (never in the grader's process).

Each receives that sandbox side's answers (the learner's, the solution notebook's or the starter's
``basket_report``) and gives it what the lab promises: a psycopg connection (autocommit) on
``DATABASE_URL``, the sandbox's own role on its own clone, kept open across calls. Only JSON goes back.
The grader counts statements on the server and times the round trips itself; the profile and the
tracemalloc peak below are reported by the process that ran the code, so the grader trusts the
profile only from the reference sandbox (the original's code) and backs the peak with a measurement
of its own (the process's resident memory, read from outside).
"""
from __future__ import annotations

import os

import psycopg
from psycopg.rows import dict_row

from perflab import memory, profiling

_STATE: dict = {}


def _conn() -> psycopg.Connection:
    conn = _STATE.get("conn")
    if conn is None or conn.closed or conn.broken:
        conn = _STATE["conn"] = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    return conn


def connect(answers) -> bool:
    """Open the connection before anything is counted or measured, and load what any report needs first
    (psycopg's loaders for the report's types, a dict_row cursor, a server-side cursor in a transaction),
    so that a report's first call is measured for its own work only. No answer runs here."""
    conn = _conn()
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute("SELECT * FROM orders ORDER BY id DESC LIMIT 1").fetchall()
    with conn.transaction(), conn.cursor(name="perflab_warm_up") as cursor:
        cursor.execute("SELECT o.id, o.created_at, count(i.id), coalesce(sum(i.quantity * i.unit_price), 0) "
                       "FROM orders AS o LEFT JOIN order_items AS i ON i.order_id = o.id "
                       "WHERE o.id = (SELECT max(id) FROM orders) GROUP BY o.id, o.created_at")
        cursor.fetchall()
    return True


def report(answers, limit: int):
    """``basket_report(conn, limit)`` on the sandbox's own connection."""
    return answers.basket_report(_conn(), int(limit))


def profile(answers, names: list) -> dict:
    """cProfile of one ``basket_report(conn)`` after a warm-up call: cumulative seconds and calls per name."""
    conn = _conn()
    answers.basket_report(conn)
    measured = profiling.profile(answers.basket_report, conn)
    return {"ranking": measured.ranking(names), "total": measured.total_seconds,
            "calls": {name: measured.seconds_of(name)[2] for name in names}}


def peak(answers, limit: int) -> int:
    """tracemalloc's peak during one ``basket_report(conn, limit)`` (bytes above the start)."""
    conn = _conn()
    return memory.peak(answers.basket_report, conn, int(limit), keep_result=False).peak_bytes
