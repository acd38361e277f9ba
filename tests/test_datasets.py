"""Course data: deterministic, shaped as the lessons need, and protected from writes."""
import psycopg
import pytest

from perflab import datasets


def test_two_builds_are_identical_row_for_row(tiny_data, course_stack):
    copies = ["perflab_check_a", "perflab_check_b"]
    try:
        for name in copies:
            datasets.build("tiny", database=name, progress=False)
        first, second = (datasets.checksum(course_stack.dsn(name)) for name in copies)
        assert first == second
        assert set(first) == {"customers", "products", "orders", "order_items"}
    finally:
        with psycopg.connect(course_stack.dsn(), autocommit=True) as conn:
            for name in copies:
                datasets._drop_database(conn, name)


def test_a_rebuild_happens_only_when_needed(tiny_data):
    assert datasets.is_built("tiny")
    report = datasets.ensure("tiny", progress=False)
    assert not report.built and report.rows["orders"] == datasets.SCALES["tiny"].orders


def test_fingerprint_depends_on_scale():
    assert datasets.fingerprint("tiny") != datasets.fingerprint("small")


def test_the_course_database_refuses_connections(tiny_data, course_stack):
    """Nothing, not even a learner's code, can write into the course data itself."""
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        psycopg.connect(course_stack.dsn(datasets.template_name("tiny")), connect_timeout=3)


def test_throwaway_copies_are_dropped(tiny_data, course_stack):
    with datasets.throwaway("tiny") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM order_items")  # a learner's worst day
        name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(course_stack.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
    with datasets.throwaway("tiny") as dsn, psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM order_items").fetchone()[0] > 0


def test_workspace_is_fresh_each_time(tiny_data):
    dsn = datasets.workspace("test_ws", "tiny")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE INDEX leftover_idx ON orders (status)")
    dsn = datasets.workspace("test_ws", "tiny")
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname = 'leftover_idx'").fetchone()[0] == 0


def test_data_has_the_shape_the_lessons_rely_on(scratch_db):
    with psycopg.connect(scratch_db) as conn:
        share = conn.execute("SELECT avg((customer_id = 1)::int) FROM orders").fetchone()[0]
        assert 0.30 <= share <= 0.38, "one tenant should hold about a third of the orders"
        first, last = conn.execute("SELECT min(created_at), max(created_at) FROM orders").fetchone()
        assert first.year == 2020 and last.year == 2025
        per_order = conn.execute("SELECT count(*)::float / count(DISTINCT order_id) FROM order_items").fetchone()[0]
        assert 2.2 <= per_order <= 2.8
        correlation = conn.execute(
            "SELECT correlation FROM pg_stats WHERE tablename = 'orders' AND attname = 'created_at'").fetchone()[0]
        assert correlation > 0.99, "orders arrive in time order, as a real table fills up"
        assert conn.execute("SHOW timezone").fetchone()[0] == "UTC"


# Disk: notebooks' copies do not pile up in a course run; throwaway copies never outlive their process.

def _databases():
    from perflab import stack

    with stack.connect() as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database")}


def test_a_notebook_copy_goes_when_its_kernel_has_ended(tiny_data):
    """As in `make run`: the next notebook's copy drops the copy of the one before (its kernel has ended);
    the copy of a notebook whose kernel still runs (here: this process) stays."""
    import subprocess
    import sys

    ended = subprocess.run(
        [sys.executable, "-c", "from perflab import datasets\n"
         "print(datasets.workspace('t_disk_a', 'tiny').rsplit('/', 1)[-1].split('?')[0])"],
        capture_output=True, text=True, check=True, timeout=120).stdout.strip().splitlines()[-1]
    assert ended.startswith(datasets.WORKSPACE_PREFIX)  # (another test process's workspace() may drop it first)
    mine = datasets.workspace("t_disk_b", "tiny").rsplit("/", 1)[-1].split("?")[0]
    try:
        names = _databases()
        assert mine in names and ended not in names, names
        assert mine not in datasets.drop_orphans()
    finally:
        from perflab import stack

        with stack.connect() as conn:
            datasets._drop_database(conn, mine)


def test_a_throwaway_copy_is_dropped_on_interrupt_and_when_its_process_is_killed(tiny_data):
    import signal
    import subprocess
    import sys

    with pytest.raises(KeyboardInterrupt):
        with datasets.throwaway("tiny") as dsn:
            name = dsn.rsplit("/", 1)[-1].split("?")[0]
            raise KeyboardInterrupt
    assert name not in _databases()

    holder = subprocess.Popen(
        [sys.executable, "-c", "import time\nfrom perflab import datasets\nwith datasets.throwaway('tiny') as dsn:\n"
         "    print(dsn.rsplit('/', 1)[-1].split('?')[0], flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    orphan = holder.stdout.readline().strip()
    assert orphan in _databases()
    assert orphan not in datasets.drop_orphans()  # its process is alive: in use, kept
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with datasets.throwaway("tiny") as dsn:  # a live one of this process survives the cleanup
        mine = dsn.rsplit("/", 1)[-1].split("?")[0]
        datasets.drop_orphans()  # this call drops it, or one of another test process did just before
        assert orphan not in _databases() and mine in _databases()
    assert orphan not in _databases()


def test_the_same_notebook_in_two_live_kernels_gets_two_copies(tiny_data):
    """A notebook open in JupyterLab while `make run` (or a test) runs it too: neither drops the other's copy."""
    import subprocess
    import sys

    from perflab import datasets

    mine = datasets.workspace("99_two_kernels", "tiny")
    code = ("import time; from perflab import datasets; print(datasets.workspace('99_two_kernels', 'tiny'), "
            "flush=True); time.sleep(30)")
    other = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        theirs = other.stdout.readline().strip()
        assert theirs and theirs != mine
        with psycopg.connect(mine) as conn:  # ours was not dropped to make theirs
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] > 0
    finally:
        other.kill()
        other.wait()
    datasets.drop_orphans()  # (or another test process's workspace() did, just before)
    assert theirs.rsplit("/", 1)[-1].split("?")[0] not in _databases()
