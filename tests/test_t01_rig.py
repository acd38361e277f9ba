"""Topic 01's measuring state (perflab/topics/t01_index/rig.py) and the settled course data it starts from."""
import psycopg

from perflab.topics.t01_index import rig


def _visibility(conn, table):
    return conn.execute("SELECT relpages, relallvisible FROM pg_class WHERE oid = %s::regclass", (table,)).fetchone()


def test_a_copy_of_the_course_data_starts_all_visible(scratch_db):
    """The build's VACUUM (FREEZE, ANALYZE) runs after a synchronous commit, so it really sets the map: a
    notebook's copy needs no VACUUM of its own before an Index Only Scan skips the table."""
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        for table in ("customers", "products", "orders", "order_items"):
            pages, visible = _visibility(conn, table)
            assert pages > 0 and visible == pages, (table, pages, visible)


def test_settle_makes_a_just_written_table_all_visible(scratch_db):
    """With synchronous_commit = off, a VACUUM right after CREATE TABLE AS could leave every page not
    all-visible (heap fetches, another plan) in one run and not the next; settle() flushes the WAL first."""
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        for attempt in range(3):
            conn.execute(f"CREATE TABLE t{attempt} AS SELECT * FROM orders WHERE id % 3 = 0")
            state = rig.settle(conn, f"t{attempt}")
            pages, visible = state[f"t{attempt}"]
            assert pages > 0 and visible == pages, (attempt, pages, visible)


def test_prepare_pins_the_session_and_says_so(scratch_db):
    with psycopg.connect(scratch_db, autocommit=True) as conn:
        line = rig.prepare(conn, "orders", quiet=True)
        assert conn.execute("SHOW max_parallel_workers_per_gather").fetchone()[0] == "0"
        assert conn.execute("SHOW jit").fetchone()[0] == "off"
        for words in ("no parallel workers", "jit off", "warm in shared_buffers", "all-visible"):
            assert words in line, line
