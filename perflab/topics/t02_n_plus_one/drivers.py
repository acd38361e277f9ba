"""Lab 02's drivers: course code that runs INSIDE a grading sandbox (never in the grader's process).

Each receives that sandbox side's answers (the learner's, the solution notebook's or the starter's
``recent_orders_page``) and builds what the call needs on the sandbox's side: a SQLAlchemy Engine on
``DATABASE_URL`` (the sandbox's own role on its own clone), kept across calls, and a fresh ``Session``
per call, as the endpoint gets in production. Only the page (JSON) goes back to the grader; the grader
counts statements on the server and times the round trip itself.
"""
from __future__ import annotations

import os

from sqlalchemy import text
from sqlalchemy.orm import Session

from perflab import models

_STATE: dict = {}


def _engine():
    engine = _STATE.get("engine")
    if engine is None:
        engine = _STATE["engine"] = models.engine(os.environ["DATABASE_URL"])
    return engine


def connect(answers) -> bool:
    """Open the Engine's pooled connection (and SQLAlchemy's one-off start-up queries) before counting."""
    with _engine().connect() as conn:
        conn.execute(text("SELECT 1"))
    return True


def page(answers, n: int):
    """``recent_orders_page(session, n)`` with a fresh Session on the sandbox's own database."""
    with Session(_engine()) as session:
        return answers.recent_orders_page(session, int(n))
