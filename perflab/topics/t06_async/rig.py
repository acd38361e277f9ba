"""What lab 06's notebook, its checks and its drivers share: the concurrency limit.

``NAMESPACE`` is what a recorded ``fetch_all`` may use without importing it (the grader re-creates the
learner's function from its source in a sandbox whose scope is pre-filled with this dict).
"""
from __future__ import annotations

import asyncio

LIMIT = 10

NAMESPACE = {"LIMIT": LIMIT, "asyncio": asyncio}
