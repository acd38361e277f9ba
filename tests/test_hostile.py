"""Hostile submissions: each tries to get a grade it did not earn or to damage something; none may.

One table of cases, one runner. Every case is the demo lab's solution with a WRONG ``dedupe`` (it keeps
repeats) plus one attack, in the kernel (a cell) or in the function the checks call (its body, a default
argument, a decorator). Each must end with the dedupe exercise failed (no unearned pass), and with
nothing damaged: tracked files unchanged, no process of a sandbox user left, no grading clone or role
left, the servers healthy, the course data's checksum unchanged. The suite ends by grading the plain
solution (passes) and the starter (0 points) once more.

The floods are bounded (a few hundred processes, a few GiB asked for, tens of MB printed) so that the
test machine stays safe even if a limit failed. Attacks on PostgreSQL and Redis themselves (superuser
SQL, other databases, uncounted connections, admin commands) are tested on the isolation layer below.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import textwrap
from pathlib import Path

import nbformat
import pytest

from perflab import datasets, paths, stack
from perflab.grading import grader, isolation, jail

FIXTURE = Path(__file__).parent / "fixtures" / "demo_lab"
SOLUTION = FIXTURE / "99_demo.ipynb"
# The demo's cells take milliseconds; an infinite loop burns a core until the cell limit, three cases
# over: 4 s is the limit at work, as 8 was, at half the CPU.
DEMO = dataclasses.replace(grader.load_lab(FIXTURE / "checks.py"), cell_timeout=4, total_timeout=90)
ROOT = Path(paths.ROOT)

WRONG = "def dedupe(items):\n    return list(items)  # keeps repeats: wrong\n"
# Marker files an attack tries to create where it must not; none may exist afterwards.
TARGETS = [ROOT / "perflab" / "grading" / "PWNED", ROOT / "build" / "PWNED", ROOT / ".perflab" / "PWNED",
           ROOT / "README.md.pwned"]
PASSWORD_FILE = paths.STATE_DIR / "stack.json"

# (case, where, code): "cell" adds a cell before the answers; "body" runs inside the called dedupe;
# "source" replaces the dedupe cell entirely (its code must define dedupe).
CASES = [
    ("monkeypatch the grader", "cell", """
        import perflab.grading.grader as g
        g.CheckResult.fail = g.CheckResult.ok
        g._run_check = lambda exercise, check, ctx: None
        g.GradeReport.passed = property(lambda self: True)
    """),
    ("monkeypatch the grader from the called function", "body", """
        import perflab.grading.grader as g, perflab.grading.sandbox as s
        g.CheckResult.fail = g.CheckResult.ok
        s.to_json = lambda value: [3, 1, 2, 5]
    """),
    ("rewrite the checks on disk", "cell", """
        import perflab.grading.grader as g
        for target in (g.__file__, g.__file__.replace("grader.py", "contracts.py")):
            try:
                open(target, "a").write("\\nCheckResult.fail = CheckResult.ok\\n")
            except OSError as exc:
                print("refused:", exc)
    """),
    ("write build/, .perflab/, the package and the README", "cell", f"""
        for target in {[str(t) for t in TARGETS]!r}:
            try:
                open(target, "w").write("pwned")
            except OSError as exc:
                print("refused:", exc)
    """),
    ("a default argument with a side effect", "source", f"""
        def dedupe(items, _=open({str(TARGETS[0])!r}, "w") if False else __import__("os").system("touch {TARGETS[1]}")):
            return list(items)
    """),
    ("os._exit while the function is re-created", "source", """
        def dedupe(items, _=__import__("os")._exit(0) if __name__ == "submission" else None):
            return list(items)
    """),
    ("a decorator with a side effect", "source", f"""
        def sneaky(fn):
            import subprocess
            subprocess.run(["sh", "-c", "echo pwned > {TARGETS[2]}"], check=False)
            return fn

        @sneaky
        def dedupe(items):
            return list(items)
    """),
    ("read the stack's passwords", "cell", f"""
        try:
            print(open({str(PASSWORD_FILE)!r}).read())
        except OSError as exc:
            print("refused:", exc)
        import os
        print(sorted(os.environ.items()))
    """),
    ("detached background processes", "cell", """
        import subprocess, os
        subprocess.Popen(["sleep", "600"], start_new_session=True)
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                subprocess.Popen(["sleep", "600"]).wait()
            os._exit(0)
    """),
    ("a detached process from the called function", "body", """
        import subprocess
        subprocess.Popen(["sleep", "600"], start_new_session=True, stdout=subprocess.DEVNULL)
    """),
    ("signal the grader and every process it can", "cell", """
        import os, signal
        for pid in (os.getppid(), 1):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as exc:
                print("refused:", exc)
    """),
    ("kill -1 from the called function", "body", """
        import os, signal
        os.kill(-1, signal.SIGKILL)
    """),
    ("os._exit in the kernel", "cell", """
        import os
        os._exit(0)
    """),
    ("os._exit in the called function", "body", """
        import os
        os._exit(0)
    """),
    ("an infinite loop in the called function", "body", """
        while True:
            pass
    """),
    ("an infinite loop that swallows interrupts in the kernel", "cell", """
        while True:
            try:
                while True:
                    pass
            except BaseException:
                pass
    """),
    ("a memory flood", "cell", """
        try:
            hog = bytearray(6 * 1024 ** 3)
        except MemoryError:
            print("refused: MemoryError")
    """),
    ("a process flood", "cell", """
        import subprocess
        children = []
        try:
            for _ in range(400):
                children.append(subprocess.Popen(["sleep", "600"]))
        except OSError as exc:
            print(f"refused after {len(children)} processes:", exc)
    """),
    ("an output flood", "cell", """
        line = "x" * 1000
        for _ in range(40_000):
            print(line)
    """),
    ("a file-size flood", "cell", """
        try:
            with open("big.bin", "wb") as f:
                for _ in range(600):
                    f.write(b"0" * (1 << 20))
        except OSError as exc:
            print("refused:", exc)
    """),
    ("a hard-coded answer for the first check", "source", """
        def dedupe(items):
            if items == [3, 1, 3, 2, 1, 5, 2]:
                return [3, 1, 2, 5]
            return list(items)
    """),
    ("an answer that lies about its type", "source", """
        class dedupe:
            def __init__(self, items):
                self.items = items
            def __eq__(self, other):
                return True
    """),
    ("forge the answers file", "cell", """
        import json, os
        with open("answers.json", "w") as f:
            f.write("[" * 100000)
    """),
]


def _notebook(tmp_path: Path, case: str, where: str, code: str) -> Path:
    nb = nbformat.read(SOLUTION, as_version=4)
    cells = {cell.id: cell for cell in nb.cells}
    code = textwrap.dedent(code).strip() + "\n"
    if where == "source":
        cells["demo-3"].source = code
    elif where == "body":
        body = textwrap.indent(code, "    ")
        cells["demo-3"].source = f"def dedupe(items):\n{body}    return list(items)\n"
    else:
        cells["demo-3"].source = WRONG
        nb.cells.insert(nb.cells.index(cells["demo-3"]), nbformat.v4.new_code_cell(code))
    path = tmp_path / "99_demo.ipynb"
    nbformat.write(nb, path)
    return path


def _tracked_changes() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                          capture_output=True, text=True).stdout


def _sandbox_processes() -> list[str]:
    """Processes of a sandbox user started by this checkout (its interpreter) or by these attacks (sleep 600);
    another checkout grading at the same time on this machine has its own."""
    import pwd
    import sys

    uids = {entry.pw_uid for entry in pwd.getpwall() if entry.pw_name.startswith(jail.USER_PREFIX)}
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ours = str(Path(sys.executable).parent).encode() in command or command.startswith(b"sleep\x00600")
            try:  # in a sandbox's cgroup: is it one of this test process's (`make test` grades in parallel)?
                groups = (entry / "cgroup").read_text()
            except OSError:
                groups = ""
            if "/perflab-" in groups and f"-{os.getpid()}-" not in groups:
                ours = False
            if uid in uids and ours:
                found.append(f"{entry.name}: {command[:80]!r}")
    return found


def _grading_leftovers(pid: int | None = None) -> list[str]:
    """This process's grading databases and roles (named after the grader's pid; other test processes grade too)."""
    pid = os.getpid() if pid is None else pid
    with stack.connect() as conn:
        return [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s UNION ALL "
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"{isolation.PREFIX}{pid}\\_%",) * 2)]


def _template_checksum() -> dict:
    with datasets.throwaway() as dsn:  # the template takes no connections: checksum a fresh copy of it
        return datasets.checksum(dsn)


@pytest.fixture(scope="module")
def baseline(tiny_data):
    return {"files": _tracked_changes(), "checksum": _template_checksum()}


@pytest.mark.parametrize("case,where,code", CASES, ids=[c[0] for c in CASES])
def test_a_hostile_submission_gains_nothing_and_damages_nothing(case, where, code, baseline, tmp_path):
    report = grader.grade(_notebook(tmp_path, case, where, code), DEMO, out_dir=tmp_path / "out")
    dedupe = next(exercise for exercise in report.exercises if exercise.name == "dedupe") if report.exercises else None
    assert not report.passed, report.text()
    assert not [c for c in report.checks if c.status == "error"], report.text()  # the learner's, not a grader bug
    assert dedupe is None or dedupe.score < dedupe.max_score, report.text()
    # Nothing damaged, nothing left behind.
    assert not [t for t in TARGETS if t.exists()], report.text()
    assert _tracked_changes() == baseline["files"]
    assert _sandbox_processes() == []
    assert _grading_leftovers() == []
    assert all(row["health"] == "healthy" for row in stack.status() if row["service"] in ("postgres", "redis"))
    assert _template_checksum() == baseline["checksum"]
    # What the learner's code could print never holds the servers' passwords.
    executed = (tmp_path / "out" / "executed_99_demo.ipynb")
    if executed.exists():
        text = executed.read_text(errors="replace")
        assert stack.ensure().postgres.url.split(":")[2].split("@")[0] not in text
        assert len(text) < 3_000_000, "the output flood was not cut"
    assert "Isolation:" in report.text()


def test_after_the_attacks_the_solution_still_passes_and_the_starter_scores_zero(baseline, tmp_path):
    from perflab import labgen

    solution = grader.grade(SOLUTION, DEMO)
    assert solution.passed, solution.text()
    starter = tmp_path / "99_demo.ipynb"
    starter.write_text(labgen.render(labgen.generate(SOLUTION)))
    assert grader.grade(starter, DEMO).score == 0


# ---------------------------------------------------------------------------------------------
# The servers a sandbox is given


def test_a_sandbox_role_can_do_nothing_outside_its_own_clone(tiny_data):
    import psycopg

    with isolation.run_database() as db:
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] > 0
            conn.execute("CREATE INDEX ON orders (total)")  # its own copy: allowed
            for sql in ("ALTER SYSTEM SET work_mem = '1GB'", "COPY (SELECT 1) TO PROGRAM 'id'",
                        "SELECT pg_read_file('postgresql.conf')", "SET log_statement = 'none'",
                        "CREATE DATABASE escape", "CREATE ROLE escape SUPERUSER",
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename <> current_user"):
                with pytest.raises(psycopg.Error):
                    conn.execute(sql)
        base = db.dsn.rsplit("/", 1)[0]
        for other in ("postgres", datasets.template_name()):
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(f"{base}/{other}").close()


def test_every_connection_of_the_role_is_counted_tagged_or_not(tiny_data):
    import psycopg

    from perflab import probes

    with isolation.run_database() as db:
        with probes.count_statements(db.admin_dsn, role=db.role, role_dsn=db.dsn) as probe:
            with psycopg.connect(db.dsn, autocommit=True, application_name="not-the-probe") as conn:
                conn.execute("SELECT 1")
                conn.execute("SELECT 2")
            with psycopg.connect(db.dsn, autocommit=True) as conn:
                conn.execute("SELECT 3")
    assert probe.count == 3 and probe.connections == 2


def test_a_sandbox_redis_has_no_admin_commands():
    import redis

    with isolation.run_redis() as server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        for command in (("CONFIG", "SET", "dir", "/tmp"), ("SAVE",), ("SHUTDOWN",), ("DEBUG", "SLEEP", "0"),
                        ("MODULE", "LIST"), ("ACL", "LIST"), ("REPLICAOF", "127.0.0.1", "1")):
            with pytest.raises(redis.ResponseError):
                client.execute_command(*command)
        assert client.get("k") == b"v"


@pytest.mark.skipif(not jail.running_as_root(), reason="sandbox users exist only when grading as root")
def test_a_sandbox_user_with_a_process_left_is_not_handed_out(monkeypatch):
    """A killed process is a zombie until it is reaped, and a zombie still counts against its user's process
    limit (a kernel started under a nearly full limit hangs): a user with any process left is skipped."""
    with jail._claimed_user() as (_, uid, gid):
        zombie = subprocess.Popen(["sleep", "600"], user=uid, group=gid, cwd="/")
        zombie.kill()  # this test is its parent and does not wait for it yet: a zombie of that user
    try:
        assert jail._uid_pids(uid) == [zombie.pid]
        monkeypatch.setattr(jail, "_SETTLE_S", 0.3)
        with jail._claimed_user() as (_, other, _):
            assert other != uid
    finally:
        zombie.wait()
    assert jail._uid_pids(uid) == []


def test_orphaned_grading_clones_are_dropped(tiny_data):
    """A grader killed mid-run leaves its clone and role; the next run drops them."""
    code = ("from perflab.grading import isolation\n"
            "import os\n"
            "cm = isolation.run_database()\n"
            "db = cm.__enter__()\n"
            "print(db.name, flush=True)\n"
            "os._exit(0)\n")
    name = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=os.environ).stdout.strip().splitlines()[-1]
    dead = int(name[len(isolation.PREFIX):].split("_")[0])
    assert name in _grading_leftovers(dead)
    isolation.sweep_orphans()  # (every grading sweeps first: another test process's may have dropped it already)
    assert name not in _grading_leftovers(dead)
