"""Counters that back a claim when a timing alone can't: statements, connections, plans, rows, buffers.

Everything here is counted **by the server**, not by wrapping the code under test, so it holds for
raw psycopg, a pool, SQLAlchemy or a learner's own connection alike.

Statements and connections — the server logs every statement of tagged connections::

    with probes.count_statements(dsn) as probe:
        run_the_endpoint(probe.dsn)        # connect with probe.dsn (it carries the tag)
    probe.count, probe.connections, probe.shapes

    with probes.assert_max_statements(2, dsn) as probe:   # fails with the SQL when exceeded
        run_the_endpoint(probe.dsn)

How: ``probe.dsn`` adds ``application_name=<tag>`` and ``log_statement=all`` to the connection's
startup options (a per-connection setting; nothing else gets slower), and the probe reads the
server's JSON log through SQL (``pg_read_binary_file``), so it also works against a server the
course did not start, provided its role may read server files (superuser or
``pg_read_server_files``) and ``logging_collector`` writes ``jsonlog``.

Plans — ``explain(dsn, sql)`` runs ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`` and returns a
:class:`Plan` with node types, rows read, buffers and a compact readable tree.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import secrets
import time
from collections import Counter
from typing import Any, Iterator

from perflab import stack

TRANSACTION_CONTROL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|START TRANSACTION|SAVEPOINT|RELEASE|END)\b", re.I)
_LOG_MESSAGE = re.compile(r"^(?:statement|execute [^:]+|duration: [\d.]+ ms\s+statement): (.*)$", re.S)


class ProbeError(RuntimeError):
    """The server's log could not be read. The message names the fix."""


class ServerLogDenied(ProbeError):
    """This database role may not read the server's log: while a lab is graded, the notebook runs as a role of
    its own, and a self-check that counts statements stops here (the grader's own checks count them)."""


@dataclasses.dataclass(frozen=True)
class Statement:
    sql: str
    session: str  # the server's session id: one per connection

    @property
    def shape(self) -> str:
        return normalize(self.sql)


def normalize(sql: str) -> str:
    """The statement's shape: literals and parameters replaced by ``?``, IN-lists collapsed.

    ``SELECT * FROM users WHERE id = 7`` and ``… id = $1`` have the same shape: that is how an
    N+1 shows up — one shape, executed N times.
    """
    text = re.sub(r"'(?:[^']|'')*'", "?", sql)  # string literals
    text = re.sub(r"\$\d+", "?", text)  # bind parameters
    text = re.sub(r"(?<![\w.])-?\d+(?:\.\d+)?\b", "?", text)  # numbers
    text = re.sub(r"\(\s*\?(?:\s*,\s*\?)*\s*\)", "(?)", text)  # IN (?, ?, ?) -> IN (?)
    text = re.sub(r"ARRAY\[[^\]]*\]", "ARRAY[?]", text)
    return re.sub(r"\s+", " ", text).strip()


class StatementProbe:
    """Collects what the server executed for connections made with :attr:`dsn`."""

    def __init__(self, dsn: str | None = None, include_transaction_control: bool = False, *,
                 role: str | None = None, role_dsn: str | None = None):
        self.base_dsn = dsn or stack.ensure().dsn()
        self.tag = f"perflab-probe-{secrets.token_hex(6)}"
        # By role (the grader): every statement any connection of ``role`` sends, tagged or not. The role
        # has log_statement=all set by a superuser (it cannot turn it off); ``role_dsn`` logs in as it.
        self.role = role
        self.role_dsn = role_dsn
        self.include_transaction_control = include_transaction_control
        self.statements: list[Statement] = []
        self._sessions: set[str] = set()
        self._start: tuple[str, int] | None = None

    @property
    def dsn(self) -> str:
        """Connect with this: it tags the connection and turns on statement logging for it alone."""
        if self.role is not None:
            return self.role_dsn
        return stack.with_params(
            self.base_dsn, application_name=self.tag,
            options="-c log_statement=all -c log_connections=on",
        )

    @property
    def sqlalchemy_url(self) -> str:
        return self.dsn.replace("postgresql://", "postgresql+psycopg://", 1)

    # -- results -------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return len(self.statements)

    @property
    def connections(self) -> int:
        """Connections opened with the tag (each is a server session)."""
        return len(self._sessions)

    @property
    def shapes(self) -> Counter:
        """How many times each statement shape ran, most frequent first."""
        return Counter(s.shape for s in self.statements)

    def report(self, limit: int = 20) -> str:
        lines = [f"{self.count} statements over {self.connections} connection(s)"]
        for i, statement in enumerate(self.statements[:limit], 1):
            lines.append(f"  {i:>3}. {_one_line(statement.sql)}")
        if self.count > limit:
            lines.append(f"  … and {self.count - limit} more; by shape:")
            for shape, n in self.shapes.most_common(5):
                lines.append(f"       {n:>5} × {_one_line(shape)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<StatementProbe {self.count} statements, {self.connections} connections>"

    # -- reading the server's log ------------------------------------------------------------
    def __enter__(self) -> "StatementProbe":
        with admin_connection(self.base_dsn) as conn:
            self._start = log_position(conn)
        return self

    def __exit__(self, *exc_info) -> None:
        self.collect()

    def collect(self, timeout: float = 10.0) -> None:
        mine, sentinel = tagged_log_entries(self.base_dsn, self.dsn, self.tag, self._start, timeout=timeout,
                                            role=self.role)
        statements, sessions = [], set()
        for entry in mine:
            message = entry.get("message", "")
            if message.startswith("connection authorized") or message.startswith("statement:") or message.startswith("execute "):
                sessions.add(entry.get("session_id"))
            match = _LOG_MESSAGE.match(message)
            if not match or sentinel in message:
                continue
            sql = match.group(1).strip()
            if not self.include_transaction_control and TRANSACTION_CONTROL.match(sql):
                continue
            statements.append(Statement(sql=sql, session=entry.get("session_id", "")))
        # The sentinel's own connection is not the code's.
        sentinel_sessions = {e.get("session_id") for e in mine if sentinel in e.get("message", "")}
        self._sessions = sessions - sentinel_sessions
        self.statements = statements


@contextlib.contextmanager
def count_statements(dsn: str | None = None, include_transaction_control: bool = False, *,
                     role: str | None = None, role_dsn: str | None = None) -> Iterator[StatementProbe]:
    """Count statements and connections the server saw from connections made with ``probe.dsn``
    (or, with ``role``, from every connection of that role: ``dsn`` is then an admin DSN)."""
    probe = StatementProbe(dsn, include_transaction_control, role=role, role_dsn=role_dsn)
    with probe:
        yield probe


@contextlib.contextmanager
def _assert_statements(expected: int, dsn: str | None, exact: bool) -> Iterator[StatementProbe]:
    with count_statements(dsn) as probe:
        yield probe
    failed = probe.count != expected if exact else probe.count > expected
    if failed:
        wanted = f"exactly {expected}" if exact else f"at most {expected}"
        raise AssertionError(
            f"expected {wanted} statement(s) but {probe.count} were executed\n{probe.report()}"
        )


def assert_max_statements(limit: int, dsn: str | None = None):
    """Fail with the captured SQL if the block ran more than ``limit`` statements (server-counted)."""
    return _assert_statements(limit, dsn, exact=False)


def assert_num_statements(expected: int, dsn: str | None = None):
    """Fail with the captured SQL unless the block ran exactly ``expected`` statements."""
    return _assert_statements(expected, dsn, exact=True)


def tagged_log_entries(base_dsn: str, tagged_dsn: str, tag: str, start: tuple[str, int] | None, *,
                       sentinel_sql: str = "SELECT '{sentinel}'", timeout: float = 10.0,
                       role: str | None = None) -> tuple[list[dict], str]:
    """The server log's entries for connections tagged ``tag`` since ``start``, once they are all in.

    The log is written asynchronously, so a last statement (``sentinel_sql``) runs on a tagged
    connection; once it shows up, everything before it has. Returns the entries and the sentinel.
    """
    import psycopg

    sentinel = f"{tag}-end"
    with psycopg.connect(tagged_dsn, autocommit=True) as conn:
        conn.execute(sentinel_sql.format(sentinel=sentinel))
    deadline = time.monotonic() + timeout
    with admin_connection(base_dsn) as conn:
        while True:
            mine = [e for e in _read_log_since(conn, start)
                    if (e.get("user") == role if role is not None else e.get("application_name") == tag)]
            if any(sentinel in e.get("message", "") for e in mine):
                return mine, sentinel
            if time.monotonic() > deadline:
                raise ProbeError(
                    f"the server's log did not show the tagged statements within {timeout:.0f} s. Fix: the "
                    "server needs logging_collector=on and log_destination including 'jsonlog' (the course's "
                    "own server has both)."
                )
            time.sleep(0.05)


def admin_connection(dsn: str):
    """An autocommit connection for reading the server's own state (its log, its statistics)."""
    return stack.connect(dsn=dsn)


def log_position(conn) -> tuple[str, int]:
    """Where the server's JSON log ends now: ``(file, size)``; entries after it are read by ``read_log_since``."""
    import psycopg

    try:
        logfile = conn.execute("SELECT pg_current_logfile('jsonlog')").fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        raise ServerLogDenied("counting statements reads the server's log, which this database role may not do "
                         "(while a lab is graded, the notebook runs as a role of its own and the grader counts "
                         "statements itself)") from None
    if not logfile:
        raise ProbeError(
            "this PostgreSQL server writes no JSON log, so statements cannot be counted server-side. "
            "Fix: set logging_collector = on and log_destination = 'stderr,jsonlog' "
            "(docker-compose.yml and the course's own server do)."
        )
    size = conn.execute("SELECT size FROM pg_stat_file(%s)", (logfile,)).fetchone()[0]
    return logfile, size


def _read_log_since(conn, start: tuple[str, int] | None) -> list[dict]:
    start_file, offset = start or (None, 0)
    current, _ = log_position(conn)
    files = [start_file] if start_file else []
    if current != start_file:
        # The log rotated while probing: read the rest of the old file and all of the new one.
        files.append(current)
    entries = []
    for index, logfile in enumerate(files):
        begin = offset if index == 0 and logfile == start_file else 0
        data = conn.execute("SELECT pg_read_binary_file(%s, %s, (1 << 29)::bigint, true)", (logfile, begin)).fetchone()[0]
        for line in bytes(data or b"").decode("utf-8", "replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    entries.append(json.loads(line))
    return entries


def _one_line(sql: str, width: int = 110) -> str:
    text = re.sub(r"\s+", " ", sql).strip()
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class PlanNode:
    node_type: str
    relation: str | None
    index: str | None
    depth: int
    actual_rows: float  # per loop, as EXPLAIN reports it
    loops: int
    rows_removed: float  # by filter or recheck, per loop
    heap_fetches: int | None
    shared_hit: int
    shared_read: int
    total_ms: float
    raw: dict = dataclasses.field(repr=False, compare=False)

    @property
    def rows_read(self) -> float:
        """Rows this node looked at: returned plus thrown away by its filter, over all loops."""
        return (self.actual_rows + self.rows_removed) * self.loops

    @property
    def label(self) -> str:
        text = self.node_type
        if self.index:
            text += f" using {self.index}"
        if self.relation:
            text += f" on {self.relation}"
        return text


@dataclasses.dataclass(frozen=True)
class Plan:
    """A parsed ``EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)``."""

    sql: str
    raw: dict = dataclasses.field(repr=False)
    nodes: tuple[PlanNode, ...]
    execution_ms: float
    planning_ms: float

    @property
    def node_types(self) -> list[str]:
        return [node.node_type for node in self.nodes]

    def has(self, node_type: str, relation: str | None = None) -> bool:
        return any(n.node_type == node_type and (relation is None or n.relation == relation) for n in self.nodes)

    def scans(self, relation: str) -> list[PlanNode]:
        return [n for n in self.nodes if n.relation == relation]

    def seq_scan_on(self, relation: str) -> bool:
        return self.has("Seq Scan", relation)

    def rows_read(self, relation: str | None = None) -> float:
        return sum(n.rows_read for n in self.nodes if n.relation and (relation is None or n.relation == relation))

    @property
    def heap_fetches(self) -> int:
        return sum(n.heap_fetches or 0 for n in self.nodes)

    @property
    def shared_hit(self) -> int:
        return self.nodes[0].shared_hit if self.nodes else 0

    @property
    def shared_read(self) -> int:
        return self.nodes[0].shared_read if self.nodes else 0

    @property
    def buffers(self) -> int:
        """8 kB pages touched (from cache or disk) by the whole plan."""
        return self.shared_hit + self.shared_read

    def tree(self) -> str:
        lines = []
        for node in self.nodes:
            details = [f"rows={_fmt(node.actual_rows * node.loops)}"]
            if node.rows_removed:
                details.append(f"removed={_fmt(node.rows_removed * node.loops)}")
            if node.loops > 1:
                details.append(f"loops={node.loops}")
            if node.heap_fetches is not None:
                details.append(f"heap_fetches={node.heap_fetches}")
            details.append(f"buffers={node.shared_hit + node.shared_read}")
            details.append(f"{node.total_ms:.2f} ms")
            lines.append("  " * node.depth + ("-> " if node.depth else "") + f"{node.label}  ({', '.join(details)})")
        lines.append(f"Execution {self.execution_ms:.2f} ms, planning {self.planning_ms:.2f} ms")
        return "\n".join(lines)

    def summary(self) -> dict:
        """The counters a lesson quotes and the report stores."""
        return {"nodes": self.node_types, "rows_read": self.rows_read(), "buffers": self.buffers,
                "heap_fetches": self.heap_fetches, "execution_ms": round(self.execution_ms, 3)}

    def __str__(self) -> str:
        return self.tree()

    def _repr_html_(self) -> str:
        from html import escape

        return f"<pre style='font-size:90%'>{escape(self.tree())}</pre>"


def _fmt(value: float) -> str:
    value = float(value)
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.0f}k"
    return f"{value:.0f}"


def _walk(node: dict, depth: int, out: list[PlanNode]) -> None:
    out.append(PlanNode(
        node_type=node["Node Type"],
        relation=node.get("Relation Name"),
        index=node.get("Index Name"),
        depth=depth,
        actual_rows=float(node.get("Actual Rows", 0)),
        loops=int(node.get("Actual Loops", 1) or 1),
        rows_removed=float(node.get("Rows Removed by Filter", 0)) + float(node.get("Rows Removed by Index Recheck", 0)),
        heap_fetches=node.get("Heap Fetches"),
        shared_hit=int(node.get("Shared Hit Blocks", 0)),
        shared_read=int(node.get("Shared Read Blocks", 0)),
        total_ms=float(node.get("Actual Total Time", 0.0)),
        raw=node,
    ))
    for child in node.get("Plans", []):
        _walk(child, depth + 1, out)


def parse_plan(sql: str, explain_json: Any) -> Plan:
    document = explain_json[0] if isinstance(explain_json, list) else explain_json
    nodes: list[PlanNode] = []
    _walk(document["Plan"], 0, nodes)
    return Plan(sql=sql, raw=document, nodes=tuple(nodes),
                execution_ms=float(document.get("Execution Time", 0.0)),
                planning_ms=float(document.get("Planning Time", 0.0)))


def explain(target, sql: str, params: Any = None, *, analyze: bool = True) -> Plan:
    """EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) a query on a DSN or an open psycopg connection.

    With ``analyze=True`` the query really runs (that is how EXPLAIN ANALYZE gets actual rows);
    a data-changing statement is rolled back. The statement is sent prepared (the extended protocol),
    so ``sql`` is exactly one statement: ``…; DROP TABLE …`` is refused, never run.
    """
    import psycopg

    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    owns = isinstance(target, str)
    conn = psycopg.connect(target) if owns else target
    try:
        # A savepoint or transaction that is always rolled back: EXPLAIN ANALYZE of an UPDATE changes nothing.
        with conn.transaction(force_rollback=True):
            row = conn.execute(f"EXPLAIN ({options}) {sql}", params, prepare=True).fetchone()
    finally:
        if owns:
            conn.close()
    return parse_plan(sql, row[0])


# --------------------------------------------------------------------------------------------
# N+1 detection (additive: built on StatementProbe and normalize)
# --------------------------------------------------------------------------------------------

class NPlusOneError(AssertionError):
    """One statement shape ran more times than allowed inside a ``detect_n_plus_one`` block."""


class NPlusOneWarning(UserWarning):
    """The warning ``detect_n_plus_one(..., action="warn")`` issues."""


@dataclasses.dataclass(frozen=True)
class RepeatedShape:
    """A statement shape that ran ``count`` times; ``example`` is one of its real statements."""

    shape: str
    count: int
    example: str

    def __str__(self) -> str:
        return f"{self.count} × {_one_line(brief_sql(self.shape), 140)}"


def brief_sql(sql: str) -> str:
    """A long select list shortened to ``SELECT … FROM``, so the part that differs (FROM/WHERE) stays visible."""
    return re.sub(r"^\s*SELECT\s+(?:(?!\bFROM\b).){60,}?\s+FROM\b", "SELECT … FROM", sql,
                  flags=re.IGNORECASE | re.DOTALL)


def repeated_shapes(probe: StatementProbe, threshold: int) -> list[RepeatedShape]:
    """Shapes a probe saw more than ``threshold`` times, most frequent first."""
    examples: dict[str, str] = {}
    for statement in probe.statements:
        examples.setdefault(statement.shape, statement.sql)
    return [RepeatedShape(shape, count, examples[shape])
            for shape, count in probe.shapes.most_common() if count > threshold]


def n_plus_one_report(probe: StatementProbe, threshold: int) -> str:
    """What ``detect_n_plus_one`` says when it fires (empty when nothing repeats too often)."""
    offenders = repeated_shapes(probe, threshold)
    if not offenders:
        return ""
    lines = [f"N+1 suspected: {len(offenders)} statement shape(s) ran more than {threshold} times "
             f"({probe.count} statements in all):"]
    lines += [f"  {offender}" for offender in offenders]
    lines.append("Load the related rows for all parents at once (joinedload / selectinload, or one "
                 "query with a JOIN or WHERE … IN) instead of one query per parent.")
    return "\n".join(lines)


@contextlib.contextmanager
def detect_n_plus_one(dsn: str | None = None, *, threshold: int = 5, action: str = "raise") -> Iterator[StatementProbe]:
    """Fail (or warn) when one statement shape runs more than ``threshold`` times in the block.

    Counted server-side like :func:`count_statements` (connect with ``probe.dsn`` or
    ``probe.sqlalchemy_url``); shapes come from :func:`normalize`, so ``… WHERE id = 7`` and
    ``… WHERE id = 8`` are the same shape. ``action``: ``"raise"`` (an :class:`NPlusOneError`, an
    AssertionError, so tests fail) or ``"warn"`` (an :class:`NPlusOneWarning`). The probe is
    yielded, so the counts stay readable after the block::

        with probes.detect_n_plus_one(lesson.dsn, threshold=3) as probe:
            endpoint(probe.sqlalchemy_url)
    """
    if action not in ("raise", "warn"):
        raise ValueError(f"action must be 'raise' or 'warn', not {action!r}")
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, not {threshold!r}")
    with count_statements(dsn) as probe:
        yield probe
    message = n_plus_one_report(probe, threshold)
    if not message:
        return
    if action == "raise":
        raise NPlusOneError(message)
    import warnings

    warnings.warn(message, NPlusOneWarning, stacklevel=3)
