"""Self-checks a learner runs inside a lab notebook: quick, visible, and never the grade itself.

The grader (``perflab grade``) runs its own checks in its own process; these only tell the learner
early whether an answer is on the right track: same rows as the original query? which plan?
"""
from __future__ import annotations

import re
from collections import Counter

from perflab import probes

# CREATE [UNIQUE] INDEX [CONCURRENTLY] [IF NOT EXISTS] name ON ...: the name, when the DDL gives one.
_INDEX_NAME = re.compile(r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
                         r"(?!ON\b)(?P<name>\"[^\"]+\"|[\w.]+)\s+ON\b", re.IGNORECASE)


def _rows(conn, sql: str, params=None) -> Counter:
    return Counter(conn.execute(sql, params).fetchall())


def query(conn, sql: str, *, same_as: str, params=None, table: str = "orders") -> bool:
    """Does ``sql`` return the same rows as ``same_as``, and does it avoid a Seq Scan on ``table``?"""
    same = _rows(conn, sql, params) == _rows(conn, same_as, params)
    plan = probes.explain(conn, sql, params)
    scan_free = not plan.seq_scan_on(table)
    print(f"same rows as the original: {'yes' if same else 'NO'}")
    print(f"plan: {' > '.join(dict.fromkeys(plan.node_types))}; rows read from {table}: "
          f"{plan.rows_read(table):,.0f}; buffers: {plan.buffers}")
    print(plan.tree())
    if not scan_free:
        print(f"-> still a Seq Scan on {table}: is the column wrapped in a function or an expression?")
    return same and scan_free


def index_only(conn, ddl: str, sql: str, params=None, table: str = "orders") -> bool:
    """Create the index (in this notebook's copy of the data), VACUUM, and show the plan.

    Re-runnable: a named index is dropped first, so running the cell again (after editing the DDL,
    or not) rebuilds it instead of failing with DuplicateTable.
    """
    named = _INDEX_NAME.match(ddl)
    if named:
        conn.execute(f"DROP INDEX IF EXISTS {named.group('name')}")
    conn.execute(ddl)
    conn.execute(f"VACUUM ANALYZE {table}")
    plan = probes.explain(conn, sql, params)
    good = plan.has("Index Only Scan", table) and plan.heap_fetches == 0
    print(plan.tree())
    print("Index Only Scan with 0 heap fetches: " + ("yes" if good else "NO"))
    return good
