"""Server-side counters: statements, connections, plans."""
import psycopg
import pytest

from perflab import probes


def test_counts_statements_and_connections_server_side(scratch_db):
    with probes.count_statements(scratch_db) as probe:
        with psycopg.connect(probe.dsn) as conn:
            for order_id in range(1, 6):
                conn.execute("SELECT * FROM orders WHERE id = %s", (order_id,)).fetchall()
        with psycopg.connect(probe.dsn, autocommit=True) as conn:
            conn.execute("SELECT count(*) FROM customers")
    assert probe.count == 6
    assert probe.connections == 2
    assert probe.shapes.most_common(1)[0] == ("SELECT * FROM orders WHERE id = ?", 5)


def test_untagged_connections_are_not_counted(scratch_db):
    with probes.count_statements(scratch_db) as probe:
        with psycopg.connect(scratch_db) as conn:
            conn.execute("SELECT 1")
    assert probe.count == 0 and probe.connections == 0


def test_assert_max_statements_reports_the_sql(scratch_db):
    with pytest.raises(AssertionError) as failure:
        with probes.assert_max_statements(2, scratch_db) as probe:
            with psycopg.connect(probe.dsn) as conn:
                for order_id in range(3):
                    conn.execute("SELECT total FROM orders WHERE id = %s", (order_id,))
    message = str(failure.value)
    assert "expected at most 2 statement(s) but 3 were executed" in message
    assert "SELECT total FROM orders WHERE id = $1" in message


def test_assert_num_statements_passes_when_exact(scratch_db):
    with probes.assert_num_statements(1, scratch_db) as probe:
        with psycopg.connect(probe.dsn) as conn:
            conn.execute("SELECT 1")


def test_normalize_gives_one_shape_per_query_pattern():
    assert probes.normalize("SELECT * FROM t WHERE id = 7 AND name = 'x'") == "SELECT * FROM t WHERE id = ? AND name = ?"
    assert probes.normalize("SELECT * FROM t WHERE id IN (1, 2, 3)") == probes.normalize("SELECT * FROM t WHERE id IN ($1)")


def test_explain_tells_seq_scan_from_index_scan(scratch_db):
    wrapped = probes.explain(scratch_db, "SELECT * FROM orders WHERE EXTRACT(YEAR FROM created_at) = 2024")
    ranged = probes.explain(
        scratch_db, "SELECT * FROM orders WHERE created_at >= '2024-01-01' AND created_at < '2025-01-01'")
    assert wrapped.seq_scan_on("orders")
    assert not ranged.seq_scan_on("orders")
    assert wrapped.rows_read("orders") == 20_000  # every row, to keep a sixth
    assert ranged.rows_read("orders") < 5_000
    assert ranged.buffers < wrapped.buffers
    assert "Seq Scan on orders" in wrapped.tree()


def test_explain_of_a_write_changes_nothing(scratch_db):
    probes.explain(scratch_db, "DELETE FROM order_items")
    with psycopg.connect(scratch_db) as conn:
        assert conn.execute("SELECT count(*) FROM order_items").fetchone()[0] > 0
