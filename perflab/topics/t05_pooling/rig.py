"""What lab 05's notebook, its checks and its drivers share: the handler's query and the pool's size.

``NAMESPACE`` is what a recorded ``open_app`` may use without importing it (the grader re-creates the
learner's function from its source in a sandbox whose scope is pre-filled with this dict).
"""
from __future__ import annotations

import psycopg

ORDER_SUMMARY_SQL = "SELECT count(*), coalesce(sum(total), 0) FROM orders WHERE customer_id = %s"
POOL_SIZE = 4

NAMESPACE = {"ORDER_SUMMARY_SQL": ORDER_SUMMARY_SQL, "POOL_SIZE": POOL_SIZE, "psycopg": psycopg}
