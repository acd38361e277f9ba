"""The course data: one deterministic shop database at three scales, and throwaway copies of it.

The data model and the generator are plain SQL in ``datasets/`` (``schema.sql``, ``generate.sql``);
this module runs them server-side, so a million orders are built in seconds without a row ever
crossing the wire. Two builds of a scale are identical row for row (``checksum()`` proves it).

The built database is a **template**: it accepts no connections, so nothing — not a lesson, not a
learner, not the grader — can change the course data. Everything works in clones:

* ``workspace("01_let_the_index_work")`` — a notebook's own copy, recreated fresh each time it runs;
* ``throwaway()`` — a copy that is dropped when the ``with`` block ends (labs, grading, tests).

Each copy records the process it was made for (a throwaway in its name, a workspace in its comment).
A copy whose process has ended (a finished notebook's kernel, a grading killed with ``kill -9``) is an
orphan: ``drop_orphans()`` removes it (every ``workspace()``, ``perflab stack up`` and ``perflab run``
call it), so `make run` holds one notebook's copy at a time and leaves none behind.

A rebuild happens only when the scale's parameters or the SQL files change (a fingerprint of
both is kept as the template's comment).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Iterator

from perflab import paths, stack


@dataclasses.dataclass(frozen=True)
class Scale:
    name: str
    customers: int
    products: int
    orders: int
    purpose: str


SCALES = {
    "tiny": Scale("tiny", customers=2_000, products=500, orders=20_000,
                  purpose="tests and CI: every notebook runs in seconds"),
    "small": Scale("small", customers=50_000, products=5_000, orders=1_000_000,
                   purpose="the default for `make run`: real plans, built in well under a minute"),
    "full": Scale("full", customers=200_000, products=10_000, orders=5_000_000,
                  purpose="where the article's '1000x' claims live; needs ~3 GB of disk"),
}
# The names are paths.SCALES (the one list, which PERFLAB_SCALE is checked against); here, what each holds.
assert tuple(SCALES) == paths.SCALES, "datasets.SCALES must describe exactly paths.SCALES"

SEED = 20240101  # changing it changes every row; it is part of the fingerprint
# How the built data is left (part of the fingerprint, so a template built the old way is rebuilt):
# 2 = the build commits synchronously, so its VACUUM (FREEZE, ANALYZE) really freezes the rows and sets
# the visibility map (with the server's synchronous_commit = off, a VACUUM right after an asynchronous
# commit could do neither: every copy started with no page all-visible and no hint bit set, and the
# first queries of each notebook paid for setting them, a different amount in each run).
BUILD_STATE = 2
SCHEMA_SQL = paths.DATASETS_DIR / "schema.sql"
GENERATE_SQL = paths.DATASETS_DIR / "generate.sql"
TEMPLATE_PREFIX = "perflab_"
CLONE_PREFIX = "perflab_tmp_"
WORKSPACE_PREFIX = "perflab_ws_"
# The advisory lock under which databases are closed to PUBLIC (here, and by the grader's sweep).
PUBLIC_CONNECT_LOCK = "perflab-grading-revoke"


def create_and_empty(dsn: str, schema: str, tables: str) -> None:
    """Create a lesson's own tables if needed (``schema``: CREATE … IF NOT EXISTS) in a notebook's or the
    grader's copy of the data, then empty ``tables``."""
    with stack.connect(dsn=dsn) as conn:
        conn.execute(schema)
        conn.execute(f"TRUNCATE {tables} RESTART IDENTITY")


class DatasetError(RuntimeError):
    """The course data could not be built or cloned. The message names the fix."""


def get_scale(scale: str | None = None) -> Scale:
    name = scale or paths.current_scale()
    if name not in SCALES:
        raise DatasetError(f"unknown scale {name!r}; choose one of {', '.join(SCALES)}")
    return SCALES[name]


def template_name(scale: str | None = None) -> str:
    return TEMPLATE_PREFIX + get_scale(scale).name


def fingerprint(scale: str | None = None) -> str:
    spec = get_scale(scale)
    digest = hashlib.sha256()
    digest.update(SCHEMA_SQL.read_bytes())
    digest.update(GENERATE_SQL.read_bytes())
    digest.update(json.dumps(dataclasses.asdict(spec) | {"seed": SEED, "build_state": BUILD_STATE},
                             sort_keys=True).encode())
    return digest.hexdigest()[:16]


def _statements(sql: str) -> list[str]:
    """Split a SQL file into statements (our files keep one statement per ';'-terminated line end)."""
    without_comments = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [part.strip() for part in re.split(r";\s*\n", without_comments) if part.strip()]


def _substitute(sql: str, spec: Scale) -> str:
    values = {"customers": spec.customers, "products": spec.products, "orders": spec.orders, "seed": SEED}
    # (?<!:) keeps `::int` casts intact; only psql-style :name variables are replaced.
    return re.sub(r"(?<!:):(customers|products|orders|seed)\b", lambda m: str(values[m.group(1)]), sql)


def _admin():
    return stack.connect()


def _template_comment(conn, dbname: str) -> str | None:
    row = conn.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (dbname,)
    ).fetchone()
    if row is None:
        return None
    return row[0] or ""


def is_built(scale: str | None = None) -> bool:
    with _admin() as conn:
        comment = _template_comment(conn, template_name(scale))
    return comment is not None and f"fingerprint={fingerprint(scale)}" in comment


@dataclasses.dataclass(frozen=True)
class BuildReport:
    scale: str
    database: str
    rows: dict
    seconds: float
    built: bool  # False when the existing build was already current

    @property
    def rows_per_second(self) -> float:
        """Rows of every table generated per second of the whole build (indexes and VACUUM included)."""
        return sum(self.rows.values()) / self.seconds if self.seconds else float("nan")

    def __str__(self) -> str:
        if not self.built:
            return f"course data '{self.scale}' is current ({self.database})"
        total = sum(self.rows.values())
        return (f"built '{self.scale}' in {self.seconds:.1f} s: {total:,} rows in all tables "
                f"({self.rows_per_second:,.0f} rows/s, indexes and VACUUM included; "
                f"{self.rows.get('orders', 0):,} orders)")


def build(scale: str | None = None, *, database: str | None = None, progress: bool = True,
          force: bool = False) -> BuildReport:
    """Build the scale's data server-side. With ``database``, build into that (non-template) name."""
    spec = get_scale(scale)
    target = database or template_name(spec.name)
    as_template = database is None
    stack.ensure()
    with _admin() as conn:
        # One builder at a time per server (a notebook and `make data` may race).
        conn.execute("SELECT pg_advisory_lock(hashtext('perflab-build'))")
        try:
            if as_template and not force and is_built(spec.name):
                return BuildReport(spec.name, target, _row_counts_from_meta(conn, target), 0.0, built=False)
            return _build_into(conn, spec, target, as_template, progress)
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('perflab-build'))")


def _drop_database(conn, name: str, attempts: int = 30) -> None:
    """Drop ``name`` (a template too). A catalog race with another session ("tuple concurrently updated",
    seen in CI while other processes created and dropped copies) or a backend still closing is retried."""
    import psycopg

    for attempt in range(attempts):
        try:
            conn.execute(f'ALTER DATABASE "{name}" IS_TEMPLATE false') if _exists(conn, name) else None
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        except (psycopg.errors.InternalError, psycopg.errors.ObjectInUse):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)


def _exists(conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _build_into(conn, spec: Scale, target: str, as_template: bool, progress: bool) -> BuildReport:
    import psycopg
    from tqdm.auto import tqdm

    building = target + "_building"
    _drop_database(conn, building)
    conn.execute(f'CREATE DATABASE "{building}"')
    _close_to_public(conn, building)
    started = time.perf_counter()
    statements = _statements(SCHEMA_SQL.read_text()) + _statements(_substitute(GENERATE_SQL.read_text(), spec))
    # On a terminal the line is overwritten in place (tqdm pads it to clear the previous text); in a
    # log (not a TTY, e.g. `make run`, CI) a carriage return would glue the updates together, so
    # each step gets one clean line of its own instead.
    tty = sys.stderr.isatty()
    if not tty:
        from tqdm import tqdm  # the plain one: a notebook widget would not help a log either
    steps = tqdm(statements, desc=f"building '{spec.name}' data", unit="step", disable=not progress,
                 dynamic_ncols=tty, ascii=not tty, mininterval=0.1 if tty else 0.0,
                 file=sys.stderr if tty else _LinePerUpdate(sys.stderr),
                 bar_format="{desc}: {n_fmt}/{total_fmt} steps [{elapsed}] {postfix}")
    try:
        # synchronous_commit = on for the build only: the commit below is on disk before VACUUM runs,
        # so VACUUM can freeze the rows and mark every page all-visible (see BUILD_STATE).
        with psycopg.connect(stack.ensure().dsn(building), options="-c synchronous_commit=on") as data_conn:
            # One transaction: with wal_level=minimal, tables created and filled in the same
            # transaction skip the write-ahead log entirely, which roughly halves the build time.
            with data_conn.transaction():
                for statement in steps:
                    steps.set_postfix_str(_describe(statement), refresh=tty)
                    data_conn.execute(statement)
            data_conn.autocommit = True
            steps.set_postfix_str("VACUUM (FREEZE, ANALYZE)", refresh=tty)
            # FREEZE + ANALYZE: statistics for the planner, and an all-visible map so that Index
            # Only Scans work from the first lesson (the lesson on heap fetches shows the opposite).
            vacuum_until_visible(data_conn, freeze=True)
            rows = {table: data_conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    for table in ("customers", "products", "orders", "order_items")}
            seconds = time.perf_counter() - started
            meta = {"scale": spec.name, "fingerprint": fingerprint(spec.name), "seed": str(SEED),
                    "build_seconds": f"{seconds:.2f}", **{f"rows.{k}": str(v) for k, v in rows.items()}}
            data_conn.execute("ALTER DATABASE \"%s\" SET timezone TO 'UTC'" % building)
            with data_conn.cursor() as cur:
                cur.executemany("INSERT INTO perflab_meta VALUES (%s, %s)", list(meta.items()))
    except Exception:
        steps.close()
        _drop_database(conn, building)
        raise
    steps.close()
    _drop_database(conn, target)
    conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{target}"')
    if as_template:
        conn.execute(f'ALTER DATABASE "{target}" WITH IS_TEMPLATE true ALLOW_CONNECTIONS false')
        comment = f"perflab course data, scale={spec.name} fingerprint={fingerprint(spec.name)} rows={json.dumps(rows)}"
        conn.execute(f"COMMENT ON DATABASE \"{target}\" IS '{comment}'")
    return BuildReport(spec.name, target, rows, seconds, built=True)


class _LinePerUpdate:
    """A file for tqdm off a terminal: each carriage-return update becomes one clean line."""

    def __init__(self, stream):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line and line != self.last:
            self.last = line
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def vacuum_until_visible(conn, *tables: str, freeze: bool = False, wait_seconds: float = 15.0,
                         before: Callable[[], None] | None = None) -> dict[str, tuple[int, int]]:
    """VACUUM (ANALYZE; FREEZE with ``freeze``) each of ``tables`` (all of the public schema's when none
    are named) until its pages are all-visible, for up to ``wait_seconds`` per table; returns
    ``{table: (pages, all-visible pages)}`` as reached.

    Pages stay not-all-visible while some session holds an older snapshot, and so does a read replica with
    ``hot_standby_feedback`` until it has replayed the write: this waits and VACUUMs again rather than
    leave (or time) an unsettled table. ``before`` runs before each VACUUM (e.g. a WAL flush)."""
    names = list(tables) or [row[0] for row in conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' ORDER BY 1")]
    option = "FREEZE, ANALYZE" if freeze else "ANALYZE"
    state = {}
    for table in names:
        deadline = time.monotonic() + wait_seconds
        while True:
            if before is not None:
                before()
            conn.execute(f'VACUUM ({option}) "{table}"')
            pages, visible = (int(v) for v in conn.execute(
                "SELECT relpages, relallvisible FROM pg_class WHERE oid = %s::regclass", (f'"{table}"',)).fetchone())
            if visible >= pages or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        state[table] = (pages, visible)
    return state


def _describe(statement: str) -> str:
    words = statement.split()
    return " ".join(words[:3])[:40]


def _row_counts_from_meta(conn, target: str) -> dict:
    comment = _template_comment(conn, target) or ""
    match = re.search(r"rows=(\{.*\})", comment)
    return json.loads(match.group(1)) if match else {}


def ensure(scale: str | None = None, progress: bool = True) -> BuildReport:
    """Build the scale's data unless the current build is already there."""
    return build(scale, progress=progress)


def _clone(name: str, scale: str | None) -> str:
    ensure(scale, progress=True)
    template = template_name(scale)
    with _admin() as conn:
        _drop_database(conn, name)
        try:
            # FILE_COPY copies the template's files in one go: a 1M-order clone takes about a second.
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
        except Exception as exc:
            raise DatasetError(
                f"could not copy the course data ({template}) into {name}: {exc}\n"
                "Fix: `perflab data build --force` rebuilds the course data."
            ) from exc
        _close_to_public(conn, name)
    return stack.ensure().dsn(name)


def _close_to_public(conn, name: str) -> None:
    """Close a database this module just made to PUBLIC (the course's own user is a superuser; a lesson's role
    is granted by name), so a grading never has to revoke it: its sweep over databases open to PUBLIC would
    otherwise update this row while this process renames, grants on or drops it ("tuple concurrently
    updated"). Under the same lock as that sweep: one such catalog change at a time."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (PUBLIC_CONNECT_LOCK,))
        conn.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{name}" FROM PUBLIC')


def workspace(name: str, scale: str | None = None) -> str:
    """A fresh copy of the course data for one notebook: recreated (dropped first) on every call.

    The copy's comment names the process (the notebook's kernel) it was made for. Copies whose process
    has ended are dropped first (`drop_orphans`): in `make run` each notebook's kernel is gone when the
    next one starts, so the disk holds the template and one copy, not one per notebook (ten copies of
    `small` were 7.5 GB); a notebook open in JupyterLab keeps its copy while its kernel lives."""
    slug = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:40]
    target = f"{WORKSPACE_PREFIX}{slug}_{get_scale(scale).name}"
    drop_orphans()
    ensure(scale, progress=True)
    with _admin() as conn, _advisory_lock(conn, "perflab-copies"):  # copy and comment it as one step
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                           (target,)).fetchone()
        owner = _owner(target, row[0] if row else None)
        if owner not in (None, os.getpid()) and stack._pid_alive(owner):
            # The same notebook in another live kernel (open in JupyterLab during `make run`, two tabs):
            # a copy of this kernel's own, rather than dropping the copy that kernel is using.
            target = f"{WORKSPACE_PREFIX}{slug[:30]}_{get_scale(scale).name}_{os.getpid()}"
        dsn = _clone(target, scale)
        conn.execute(f"COMMENT ON DATABASE \"{target}\" IS 'perflab workspace, pid={os.getpid()}'")
    return dsn


def _owner(name: str, comment: str | None) -> int | None:
    """The pid of the process a copy belongs to: in a throwaway's name, or in a workspace's comment."""
    found = (re.fullmatch(re.escape(CLONE_PREFIX) + r"(\d+)_[0-9a-f]+", name)
             or re.search(r"pid=(\d+)", comment or ""))
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def _advisory_lock(conn, key: str) -> Iterator[None]:
    conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


def drop_orphans() -> list[str]:
    """Drop the copies nobody can use any more: throwaway copies and notebooks' copies whose process is gone
    (a grading killed before its cleanup ran, a notebook's kernel that ended), and the half-built
    ``*_building`` databases of a build that was killed. On a server of your own (``DATABASE_URL``) the
    processes may be on other machines, so nothing is dropped there."""
    if os.environ.get("DATABASE_URL", "").strip():
        return []
    with _admin() as conn, _advisory_lock(conn, "perflab-copies"):
        rows = conn.execute(
            "SELECT datname, shobj_description(d.oid, 'pg_database'),"
            " EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)"
            " FROM pg_database d WHERE datname LIKE %s OR datname LIKE %s OR datname LIKE %s",
            (CLONE_PREFIX + "%", WORKSPACE_PREFIX + "%", TEMPLATE_PREFIX + "%\\_building")).fetchall()
        orphans = []
        for name, comment, connected in rows:
            if name.endswith("_building"):
                # A build holds the advisory lock for its whole run: no holder means nobody is building.
                if not conn.execute("SELECT pg_try_advisory_lock(hashtext('perflab-build'))").fetchone()[0]:
                    continue
                conn.execute("SELECT pg_advisory_unlock(hashtext('perflab-build'))")
            else:
                owner = _owner(name, comment)
                if connected or (owner is not None and stack._pid_alive(owner)):
                    continue
            _drop_database(conn, name)
            orphans.append(name)
    return orphans


def disk_usage() -> dict:
    """Bytes on disk: each course database (templates, notebooks' copies, throwaways) and the server's folder."""
    with _admin() as conn:
        # By oid: a database another process drops meanwhile (a grading's or a test's copy) gives NULL, and
        # is left out, where its name would raise or its NULL break the sum (CI: `stack status` crashed so).
        rows = conn.execute("SELECT datname, pg_database_size(oid) FROM pg_database WHERE datname LIKE %s "
                            "ORDER BY 1", (TEMPLATE_PREFIX + "%",)).fetchall()
    return {name: size for name, size in rows if size is not None}


@contextlib.contextmanager
def throwaway(scale: str | None = None) -> Iterator[str]:
    """A copy of the course data that is dropped when the block ends. Yields its DSN."""
    name = f"{CLONE_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    dsn = _clone(name, scale)
    try:
        yield dsn
    finally:
        with _admin() as conn:
            _drop_database(conn, name)


def drop_clones() -> list[str]:
    """Drop every workspace and throwaway copy (the templates stay)."""
    with _admin() as conn:
        names = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s OR datname LIKE %s",
            (CLONE_PREFIX + "%", WORKSPACE_PREFIX + "%"))]
        for name in names:
            _drop_database(conn, name)
    return names


def checksum(dsn: str) -> dict:
    """An md5 per table over every row in id order: equal checksums mean identical data."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        return {table: conn.execute(
            f"SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM {table} AS t").fetchone()[0]
            for table in ("customers", "products", "orders", "order_items")}


def describe() -> list[dict]:
    """What is built: one row per scale."""
    rows = []
    with _admin() as conn:
        for name, spec in SCALES.items():
            comment = _template_comment(conn, template_name(name))
            current = comment is not None and f"fingerprint={fingerprint(name)}" in comment
            size = None
            if comment is not None:
                size = conn.execute("SELECT pg_size_pretty(pg_database_size(%s))", (template_name(name),)).fetchone()[0]
            rows.append({"scale": name, "orders": spec.orders, "built": comment is not None,
                         "current": current, "size": size, "purpose": spec.purpose})
    return rows


def dataset_path(name: str) -> Path:
    return paths.DATASETS_DIR / name
