"""What a grading run gives each sandbox of the course's servers: a database and a Redis of its own.

- **PostgreSQL**: `run_database` creates a fresh login role (``NOSUPERUSER NOCREATEDB NOCREATEROLE``,
  a random password, ``statement_timeout`` and ``idle_in_transaction_session_timeout`` set, and
  ``log_statement=all`` so the server logs every statement it sends on any connection: a superuser-only
  setting it cannot turn off) and a throwaway clone of the course data owned by that role, so it can
  create indexes on its own copy and nothing else. ``CONNECT`` is revoked from ``PUBLIC`` on every other
  database (the course templates, ``postgres``, other runs' clones), and the role has no server-file or
  server-program privileges. The grader keeps its own admin connection; the sandbox never sees it.
- **Redis**: `run_redis` starts a throwaway ``redis-server`` (the same pip binary as the course's) on a
  free loopback port with a generated password, ``CONFIG``, ``SAVE``, ``DEBUG``, ``MODULE``, ``SHUTDOWN``
  and the other admin and dangerous commands renamed away, owned and stopped by the grader.
- **Orphans**: every name carries the grader's pid (``perflab_grade_<pid>_<hex>``); `sweep_orphans` drops
  the clones and roles of graders that are no longer alive (a killed grader, a power cut), and
  runs at the start of every grading run.
"""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

from perflab import datasets, stack

__all__ = ["RunDatabase", "run_database", "run_redis", "sweep_orphans", "PREFIX"]

PREFIX = "perflab_grade_"
_NAME = re.compile(rf"^{PREFIX}(\d+)_[0-9a-f]+$")
STATEMENT_TIMEOUT = "120s"
IDLE_IN_TRANSACTION_TIMEOUT = "60s"
CONNECTION_LIMIT = 64


@dataclass(frozen=True)
class RunDatabase:
    name: str       # the clone (also the role's name)
    role: str
    dsn: str        # logs in as the role: what the sandbox gets
    admin_dsn: str  # the grader's own (superuser) connection to the clone: never given to the sandbox.
    # Its search_path is pg_catalog first, fixed at connection start: the role owns the clone's public schema
    # and could plant a public.pg_read_binary_file(...) that a superuser's unqualified call would run.


def _admin():
    return stack.connect()


def _drop(conn, name: str) -> None:
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s OR usename = %s",
                 (name, name))
    for _ in range(50):
        try:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            break
        except Exception:  # noqa: BLE001 - a backend still closing: try again
            time.sleep(0.1)
    with contextlib.suppress(Exception):
        conn.execute(f'DROP ROLE IF EXISTS "{name}"')


def sweep_orphans() -> list[str]:
    """Drop grading clones and roles whose grader process is gone. Returns their names."""
    dropped = []
    with _admin() as conn:
        names = {row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                                (PREFIX + "%",))}
        names |= {row[0] for row in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s",
                                                 (PREFIX + "%",))}
        for name in sorted(names):
            match = _NAME.match(name)
            if match and not stack._pid_alive(int(match.group(1))):
                _drop(conn, name)
                dropped.append(name)
    return dropped


def _log_connections(conn) -> None:
    """Connections are counted from the log too; log_connections can only be set server-wide for a role."""
    if conn.execute("SHOW log_connections").fetchone()[0] != "on":
        conn.execute("ALTER SYSTEM SET log_connections = on")
        conn.execute("SELECT pg_reload_conf()")


# How a clone is made (PostgreSQL 15+). FILE_COPY copies the template's files, but checkpoints before and
# after: the server writes out every dirty page it holds, other tests' and notebooks' included (a second at
# small, 1M orders, it is still the quick way). WAL_LOG copies block by block through the WAL, with no
# checkpoint: for a template of a few tens of MB (tiny) it takes half the time (0.24 s instead of 0.42 s per
# clone here, three clones per grading). The clone's contents and owner are the same either way.
WAL_LOG_UP_TO_BYTES = 64 * 1024 * 1024
_TEMPLATE_BYTES: dict[str, int] = {}


def _clone_strategy(conn, template: str) -> str:
    if template not in _TEMPLATE_BYTES:
        _TEMPLATE_BYTES[template] = conn.execute("SELECT pg_database_size(%s)", (template,)).fetchone()[0]
    return "WAL_LOG" if _TEMPLATE_BYTES[template] <= WAL_LOG_UP_TO_BYTES else "FILE_COPY"


def _revoke_public_connect(conn) -> None:
    """No database is open to PUBLIC; one lock at a time (two gradings revoking at once collide in pg_database)."""
    import psycopg

    open_to_public = ("SELECT datname FROM pg_database WHERE datallowconn AND (datacl IS NULL OR EXISTS ("
                      "SELECT 1 FROM aclexplode(datacl) a WHERE a.grantee = 0 "
                      "AND a.privilege_type IN ('CONNECT', 'TEMPORARY')))")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (datasets.PUBLIC_CONNECT_LOCK,))
        for (name,) in conn.execute(open_to_public).fetchall():
            # A database another process creates or drops meanwhile (a notebook's copy, a test's throwaway
            # copy) can make a REVOKE fail with "tuple concurrently deleted/updated": retry while it exists.
            for attempt in range(10):
                try:
                    with conn.transaction():
                        conn.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{name}" FROM PUBLIC')
                    break
                except (psycopg.errors.InternalError, psycopg.errors.InvalidCatalogName,
                        psycopg.errors.ObjectNotInPrerequisiteState):
                    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                        break
                    time.sleep(0.05 * (attempt + 1))
            else:
                raise RuntimeError(f"could not revoke CONNECT on database {name} from PUBLIC")


@contextlib.contextmanager
def run_database(scale: str | None = None) -> Iterator[RunDatabase]:
    """A fresh role and its own clone of the course data; both dropped when the block ends."""
    datasets.ensure(scale, progress=False)
    template = datasets.template_name(scale)
    name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(5)}"
    password = secrets.token_urlsafe(18)
    running = stack.ensure()
    try:
        with _admin() as conn:
            conn.execute(
                f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS '
                f"NOINHERIT CONNECTION LIMIT {CONNECTION_LIMIT} PASSWORD %s".replace("%s", _literal(conn, password)))
            for setting, value in (("statement_timeout", STATEMENT_TIMEOUT),
                                   ("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION_TIMEOUT),
                                   ("log_statement", "all")):
                conn.execute(f'ALTER ROLE "{name}" SET {setting} = \'{value}\'')
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY {_clone_strategy(conn, template)} '
                         f'OWNER "{name}"')
            _revoke_public_connect(conn)
            _log_connections(conn)
        admin_dsn = _pinned_search_path(running.dsn(name))
        with stack.connect(dsn=admin_dsn) as conn:
            for kind, relkinds in (("TABLE", "rp"), ("SEQUENCE", "S"), ("VIEW", "v"), ("MATERIALIZED VIEW", "m")):
                rows = conn.execute(
                    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                    "AND c.relkind = ANY(%s) AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid "
                    "AND d.deptype IN ('a', 'i'))", (list(relkinds),)).fetchall()
                for (relation,) in rows:
                    conn.execute(f'ALTER {kind} {relation} OWNER TO "{name}"')
        dsn = _role_dsn(running.dsn(name), name, password)
        yield RunDatabase(name=name, role=name, dsn=dsn, admin_dsn=admin_dsn)
    finally:
        with _admin() as conn:
            _drop(conn, name)


def on_replica(role_dsn: str, replica) -> str:
    """``role_dsn`` pointed at the course's streaming replica (roles and clones replicate), once it has them."""
    from urllib.parse import urlsplit, urlunsplit

    replica.catch_up()
    parts = urlsplit(role_dsn)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{replica.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _pinned_search_path(dsn: str) -> str:
    """``dsn`` with ``search_path=pg_catalog,pg_temp`` as a startup option (it wins over ALTER DATABASE/ROLE)."""
    return stack.with_params(dsn, options="-c search_path=pg_catalog,pg_temp")


def _literal(conn, value: str) -> str:
    from psycopg import sql

    return sql.Literal(value).as_string(conn)


def _role_dsn(admin_dsn: str, role: str, password: str) -> str:
    """``admin_dsn`` with the user and password replaced (URL form)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(admin_dsn)
    host = parts.hostname or "127.0.0.1"
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# ---------------------------------------------------------------------------------------------
# Redis


# Commands a learner's Redis never offers (renamed to nothing): administration, persistence to
# arbitrary files, replication, scripting debuggers, modules, and shutting the server down.
_DISABLED_REDIS = ("CONFIG", "SAVE", "BGSAVE", "BGREWRITEAOF", "DEBUG", "MODULE", "SHUTDOWN", "REPLICAOF",
                   "SLAVEOF", "SYNC", "PSYNC", "MIGRATE", "FAILOVER", "ACL", "MONITOR", "CLIENT", "CLUSTER", "LASTSAVE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RunRedis:
    url: str        # what the sandbox gets
    port: int
    password: str
    admin_command: str  # the renamed INFO/ CONFIG for the grader's own statistics (never given out)


@contextlib.contextmanager
def run_redis() -> Iterator[RunRedis]:
    """A throwaway Redis server for one sandbox, stopped (and its folder removed) when the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="perflab-redis-"))
    os.chmod(folder, 0o700)
    password = secrets.token_urlsafe(18)
    admin = "PERFLAB_" + secrets.token_hex(8).upper()
    port = _free_port()
    conf = folder / "redis.conf"
    lines = ["bind 127.0.0.1", f"port {port}", f"requirepass {password}", f"dir {folder}", "daemonize no",
             "protected-mode yes", 'save ""', "appendonly no", "maxmemory 256mb", "maxmemory-policy noeviction",
             f"logfile {folder / 'redis.log'}"]
    lines += [f'rename-command {command} ""' for command in _DISABLED_REDIS if command != "CONFIG"]
    lines.append(f"rename-command CONFIG {admin}")
    conf.write_text("\n".join(lines) + "\n")
    os.chmod(conf, 0o600)
    proc = subprocess.Popen([str(stack.redis_server_binary()), str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"
    try:
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise stack.StackError(f"a throwaway Redis for grading did not start on 127.0.0.1:{port}; "
                                           f"log: {(folder / 'redis.log').read_text()[-500:] if (folder / 'redis.log').exists() else ''}")
                time.sleep(0.02)
        yield RunRedis(url=url, port=port, password=password, admin_command=admin)
    finally:
        proc.kill()
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
