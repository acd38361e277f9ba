"""Topic 01's measuring state: one pinned, settled, warm state before every comparison.

Two runs of notebook 01 on the same idle machine must give the same verdicts, and their headline ratios
should differ by noise, not by the state the server happened to be in. What varied from run to run:

* **Parallel workers.** A Seq Scan over ``orders`` is split across ``max_parallel_workers_per_gather``
  (2 by default) workers when its cost is high enough (``small`` and ``full``). How much that helps
  depends on how many of the machine's cores are free at that instant (two cores, shared with anything
  else running), so the function-wrapped query's time, and every ratio against it, moved with the load.
  Pinned: ``max_parallel_workers_per_gather = 0``, one backend per query, as the article's model has it.
* **JIT.** Off on the course server already (``perflab/stack.py``); pinned for the session too, so a
  server of your own (``DATABASE_URL``) measures the same thing.
* **The visibility map.** The server runs with ``synchronous_commit = off``: a commit's WAL record reaches
  the disk up to ``wal_writer_delay`` (200 ms) later, and until then VACUUM may not mark its rows visible
  to all. A ``VACUUM`` issued right after a ``CREATE TABLE … AS`` or an ``UPDATE`` therefore left the
  table all-visible in one run and not in the next; the index-only scans then visited the table (heap
  fetches) or the planner chose another plan (a Bitmap Heap Scan for the composite index). :func:`settle`
  flushes the WAL first (one synchronous commit), then VACUUMs, then checks the map. It VACUUMs with
  ``FREEZE``, as the data build does: on a table just filled, a plain VACUUM marked none of its pages
  all-visible for 1–8 passes in a row (0 of 6,185 pages, 0.25 s apart: 1.4–6 s per table), FREEZE marks
  them in its first pass. Frozen or merely all-visible, the scans below read the same pages.
* **The buffer cache.** A fresh copy of the data starts cold; a Seq Scan over a table larger than a quarter
  of ``shared_buffers`` reads through a small ring and leaves nothing behind, so its time depended on the
  operating system's cache. :func:`warm` reads the table and each of its indexes once through the buffer
  manager (an index scan, which does not use the ring), so the first timed round finds them in memory.

None of this changes what the lesson teaches: the function-wrapped query still reads every row and the
range query only the window; the settings are printed (:func:`describe`) so a learner sees what was pinned.
"""
from __future__ import annotations

__all__ = ["PINNED", "pin", "settle", "warm", "describe", "prepare"]

# Session settings of every connection the notebook times on (``SET``, this session only).
PINNED = {
    "max_parallel_workers_per_gather": "0",  # one backend per query: no dependence on free cores
    "jit": "off",  # no compile time inside a measurement
}


def pin(conn) -> dict:
    """Apply :data:`PINNED` to ``conn``'s session; returns the settings as the server now reports them."""
    for name, value in PINNED.items():
        conn.execute(f"SET {name} = {value}")
    return {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in PINNED}


def _flush_wal(conn) -> None:
    """One synchronous commit: it flushes the WAL up to its own record, so every earlier commit is on disk
    and its rows can be marked visible to all (the server commits asynchronously)."""
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = on")
        conn.execute("SELECT pg_current_xact_id()")


def settle(conn, *tables: str, wait_seconds: float = 15.0) -> dict[str, tuple[int, int]]:
    """Flush the WAL, ``VACUUM (FREEZE, ANALYZE)`` each table, and check that its pages are all-visible (again, for
    up to ``wait_seconds``, while a snapshot or topic 11's replica holds VACUUM back: see
    ``datasets.vacuum_until_visible``). Returns ``{table: (pages, all-visible pages)}`` as reached (printed
    by :func:`describe`)."""
    from perflab import datasets

    return datasets.vacuum_until_visible(conn, *tables, freeze=True, wait_seconds=wait_seconds,
                                         before=lambda: _flush_wal(conn))


def _indexes(conn, table: str) -> list[tuple[str, str]]:
    """(index name, first key column) of each plain B-tree index on ``table``."""
    return conn.execute(
        "SELECT i.relname, a.attname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
        "JOIN pg_am am ON am.oid = i.relam JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0] "
        "WHERE x.indrelid = %s::regclass AND am.amname = 'btree' AND x.indkey[0] <> 0 AND x.indpred IS NULL",
        (table,)).fetchall()


def warm(conn, *tables: str) -> dict[str, int]:
    """Read each table and every B-tree index on it once through the buffer manager; returns bytes read
    per table (heap + indexes). Index scans, not Seq Scans: a Seq Scan of a large table uses a 256 kB ring
    and would leave the table cold."""
    read = {}
    for table in tables:
        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")
            conn.execute("SET LOCAL enable_bitmapscan = off")
            conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            for position, (_, column) in enumerate(_indexes(conn, table)):
                # The first index is scanned with its table rows (every heap page); the others index-only.
                conn.execute("SET LOCAL enable_indexonlyscan = " + ("off" if position == 0 else "on"))
                conn.execute(f"SELECT count({'*' if position else 't.*'}) FROM {table} t "
                             f"WHERE {column} IS NOT NULL").fetchone()
        read[table] = int(conn.execute("SELECT pg_total_relation_size(%s::regclass)", (table,)).fetchone()[0])
    return read


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def describe(conn, settled: dict[str, tuple[int, int]] | None = None, warmed: dict[str, int] | None = None) -> str:
    """One line for the notebook: what the comparisons below are measured with."""
    shown = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in (*PINNED, "shared_buffers")}
    parts = ["1 backend per query",
             "no parallel workers" if shown["max_parallel_workers_per_gather"] == "0"
             else f"{shown['max_parallel_workers_per_gather']} parallel workers",
             f"jit {shown['jit']}"]
    if warmed:
        tables = ", ".join(f"{t} {_megabytes(b)}" for t, b in warmed.items())
        capacity = int(conn.execute("SELECT setting::bigint * 8192 FROM pg_settings "
                                    "WHERE name = 'shared_buffers'").fetchone()[0])
        if sum(warmed.values()) <= capacity:
            parts.append(f"table warm in shared_buffers ({tables} with indexes, of {shown['shared_buffers']})")
        else:  # say so rather than claim a warm cache that cannot hold the table
            parts.append(f"table read once before timing ({tables} with indexes: more than shared_buffers, "
                         f"{shown['shared_buffers']}, so part of each Seq Scan comes from the OS cache)")
    if settled:
        states = ", ".join(f"{t} {v:,}/{p:,} pages all-visible" for t, (p, v) in settled.items())
        parts.append(f"vacuumed ({states})")
    return "measured with: " + ", ".join(parts)


def prepare(conn, *tables: str, quiet: bool = False) -> str:
    """Pin ``conn``, settle and warm ``tables``; print (unless ``quiet``) and return the line saying so."""
    pin(conn)
    settled = settle(conn, *tables)
    warmed = warm(conn, *tables)
    line = describe(conn, settled, warmed)
    if not quiet:
        print(line)
    return line
