"""The read replica: a real streaming standby of the course server, idempotent, recoverable, measurable."""
import os
import subprocess
import sys
import time

import psycopg
import pytest

from perflab import stack
from test_stack import private_stack  # noqa: F401 - a stack of its own in a temporary folder


@pytest.fixture(scope="module")
def replica(course_stack):
    if os.environ.get("DATABASE_URL"):
        pytest.skip("DATABASE_URL points the course at another server: perflab makes no replica of it")
    return stack.ensure_replica(apply_delay_ms=0)


def test_up_twice_is_idempotent(replica):
    _, first = stack.replica_up()
    _, again = stack.replica_up()
    assert any("already running" in m for m in again), again
    assert not any("restarted" in m for m in again), again  # the primary keeps its replication settings
    assert stack.ensure_replica().port == replica.port


def test_it_is_a_standby_of_the_course_server_on_loopback(replica):
    assert replica.service.host == "127.0.0.1" and replica.port != replica.primary.port
    with stack.connect(dsn=replica.url) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE must_fail (id int)")
    with stack.connect(dsn=replica.primary.url) as conn:
        role = conn.execute("SELECT rolreplication FROM pg_roles WHERE rolname = %s", (stack.REPLICA_ROLE,)).fetchone()
        hba = conn.execute("SELECT count(*) FROM pg_hba_file_rules WHERE %s = ANY(user_name) "
                           "AND 'replication' = ANY(database)", (stack.REPLICA_ROLE,)).fetchone()[0]
    assert role == (True,) and hba == 1


def test_status_shows_streaming_and_lag(replica):
    row = stack.replica_status()
    assert row["health"] == "healthy" and row["state"] == "streaming", row
    assert row["bytes"] is not None and row["bytes"] >= 0 and row["replay_lsn"]
    out = subprocess.run([sys.executable, "-m", "perflab.cli", "stack", "replica", "status"],
                         capture_output=True, text=True, env=os.environ)
    assert out.returncode == 0 and "streaming" in out.stdout and "replay_lsn" in out.stdout, out.stdout + out.stderr
    assert "***" in out.stdout  # the password is masked


def test_a_write_on_the_primary_is_visible_on_the_replica_after_replay(replica):
    with stack.connect(dsn=replica.primary.url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS perflab_replica_probe (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO perflab_replica_probe VALUES (1, 'before') ON CONFLICT (id) DO UPDATE SET v = 'before'")
        replica.catch_up()
        conn.execute("UPDATE perflab_replica_probe SET v = 'after' WHERE id = 1")
        lsn = str(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0])
    assert replica.wait_for_lsn(lsn, timeout=10)
    with stack.connect(dsn=replica.url) as conn:
        assert conn.execute("SELECT v FROM perflab_replica_probe WHERE id = 1").fetchone()[0] == "after"


def test_apply_delay_makes_reads_stale_then_it_is_restored(replica):
    with stack.replica(apply_delay_ms=800) as delayed:
        with stack.connect(dsn=delayed.primary.url) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS perflab_replica_probe (id int PRIMARY KEY, v text)")
            conn.execute("INSERT INTO perflab_replica_probe VALUES (2, 'old') ON CONFLICT (id) DO UPDATE SET v = 'old'")
            delayed.catch_up()
            conn.execute("UPDATE perflab_replica_probe SET v = 'new' WHERE id = 2")
            lsn = str(conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0])
        with stack.connect(dsn=delayed.url) as conn:
            assert conn.execute("SHOW recovery_min_apply_delay").fetchone()[0] == "800ms"
            assert conn.execute("SELECT v FROM perflab_replica_probe WHERE id = 2").fetchone()[0] == "old"
        assert delayed.wait_for_lsn(lsn, timeout=10)
    with stack.connect(dsn=stack.ensure_replica().url) as conn:
        assert conn.execute("SHOW recovery_min_apply_delay").fetchone()[0] == "0"


def test_kill_9_then_up_recovers(replica):
    pid = stack.ensure_replica().service.pid
    os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while stack._pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.replica_status()["health"].startswith("down")
    recovered, messages = stack.replica_up()
    assert any("started" in m for m in messages), messages
    assert recovered.service.pid != pid
    # After a kill -9 the replica first replays what it missed ("catchup"), then streams.
    deadline = time.monotonic() + 30
    while stack.replica_lag(recovered)["state"] != "streaming" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stack.replica_lag(recovered)["state"] == "streaming"
    # and it still follows the primary
    with stack.connect(dsn=recovered.primary.url) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS perflab_replica_probe (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO perflab_replica_probe VALUES (3, 'x') ON CONFLICT (id) DO UPDATE SET v = 'y'")
    recovered.catch_up(timeout=60)  # other test processes keep it busy replaying their clones


def test_first_replica_switches_the_primary_once_and_down_stops_it_too(private_stack, monkeypatch):
    monkeypatch.delenv("PERFLAB_REPLICA_URL", raising=False)
    stack.up()
    first, messages = stack.replica_up()
    assert any("restarted once" in m for m in messages), messages  # wal_level minimal -> replica
    assert any("created from a base backup" in m for m in messages), messages
    assert str(private_stack) in first.service.data_dir
    stopped = stack.down()
    assert any(m.startswith("replica: stopped") for m in stopped), stopped
    deadline = time.monotonic() + 5  # pg_ctl returns once postmaster.pid is gone, a moment before the process
    while stack._pid_alive(first.service.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stack._pid_alive(first.service.pid)
    stack.up()
    again, messages = stack.replica_up()
    assert not any("restarted" in m or "base backup" in m for m in messages), messages  # resumes from its data
    assert again.lag()["state"] == "streaming"


def test_a_replica_of_someone_elses_server_is_refused_with_the_fix(monkeypatch, course_stack):
    monkeypatch.setenv("DATABASE_URL", course_stack.postgres.url)
    with pytest.raises(stack.StackError, match="PERFLAB_REPLICA_URL"):
        stack.replica_up()


def test_the_latency_proxy_can_sit_in_front_of_the_replica(replica):
    with replica.latency_proxy(rtt_ms=20) as proxy:
        with psycopg.connect(proxy.url, autocommit=True) as conn:
            conn.execute("SELECT 1")
            started = time.perf_counter()
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
            elapsed = time.perf_counter() - started
    assert elapsed >= 0.018, f"a round trip through a 20 ms proxy took {elapsed * 1000:.1f} ms"
