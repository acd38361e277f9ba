"""Test session set-up: tiny data, the fast preset, and servers of the tests' own.

`make test` sets these too; the defaults here make a bare `pytest` behave the same. The test
servers keep their state in .perflab/test, so a course running in .perflab/ is never touched.
"""
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PERFLAB_SCALE", "tiny")
os.environ.setdefault("PERFLAB_PRESET", "fast")
os.environ.setdefault("PERFLAB_STATE_DIR", str(ROOT / ".perflab" / "test"))
os.environ.setdefault("PERFLAB_BUILD_DIR", str(ROOT / "build" / "test"))
os.environ.setdefault("MPLBACKEND", "Agg")
# The tests' server: lesson notebooks, gradings and the browser's kernels run at once in `make test`'s
# processes, each with pools of up to 32 connections (the course's own server keeps 100).
os.environ.setdefault("PERFLAB_PG_MAX_CONNECTIONS", "200")

import pytest  # noqa: E402


# `make test` runs tests in parallel (pytest-xdist, `--dist loadgroup`): while one test waits on a server, a
# kernel or a sleep, another uses the CPU (with 4 processes both cores are ~95% busy for the whole run; the
# CPU goes to PostgreSQL, kernels, the grader's sandboxes and the tests themselves). Each file is one unit
# of work (its module fixtures, e.g. the browser test's JupyterLab, start once); a lab's tests in
# test_labs.py go with its own test file (they share its graded solution and starter, `labtools.graded`);
# the lesson notebooks run one after another in one process (`CourseRun` runs each once per session,
# whichever process asks first), with the report's audit that reads their run and the tests that use the
# read replica. The controller starts the servers, builds the tiny data and clears the build folder before
# any worker starts, and stops the servers at the end.
def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def _parallel(config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not _is_worker(config)


# The read replica is one server: notebook 11, lab 11 and the replica tests each change its apply delay and
# read its lag, so they run one after another, in one process of their own ("replica"); the other lessons
# run one after another in another ("notebooks"). With 4 processes (the server keeps 200 connections for
# the tests) the two groups were one, and at 440 s of a 459 s run, the run's longest.
_REPLICA_USERS = ("test_replica", "test_lab11")


def _group(item) -> str:
    path = Path(str(item.fspath)).stem
    params = getattr(getattr(item, "callspec", None), "params", {})
    if path in _REPLICA_USERS or (path == "test_labs" and params.get("lab") == "11"):
        return "replica"
    if "course_run" in getattr(item, "fixturenames", ()):
        return "replica" if Path(str(params.get("notebook", ""))).name.startswith("11_") else "notebooks"
    if path == "test_labs" and "lab" in params:
        return "lab" + str(params["lab"])
    if path.startswith("test_lab") and path[len("test_lab"):].isdigit():
        return "lab" + path[len("test_lab"):]
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """When the "replica" group's last test is done, stop the replica and delete its copy. xdist sends a group
    to one process as a whole, so a next test of another group (or none) means the group is finished. A
    standby replays every byte of WAL the primary writes: left running, it replayed the rest of the run's
    grading copies and spent ~40 s of CPU (of ~1,000 in all) on nothing."""
    yield
    if _is_worker(item.config) and _group(item) == "replica" and (nextitem is None or _group(nextitem) != "replica"):
        from perflab import stack

        stack.replica_remove()


def pytest_itemcollected(item):
    # here, not in pytest_collection_modifyitems: xdist reads the groups in its own modifyitems hook
    if not any(True for _ in item.iter_markers("xdist_group")):
        item.add_marker(pytest.mark.xdist_group(_group(item)))


# Longest groups first. xdist hands the groups out in the order the processes collected them (not by its
# own count of tests: see pytest_configure), and a process takes its next group when the last one is
# nearly done, so a long group handed out late is the run's tail. The seconds are a group's share of the
# table `make test` prints at the end (4 processes, tiny; update them when it changes much); a group not
# listed runs after the listed ones, in file order. "replica" goes first whatever its length: its first
# test runs notebook 11, which the report's audit (the last test of "notebooks") must find done, not run
# itself beside lab 11 on the one replica.
_GROUP_SECONDS = {
    "replica": 1000, "notebooks": 290, "lab08": 160, "test_browser": 150, "test_hostile": 145, "lab05": 120,
    "lab10": 110, "lab01": 90, "lab06": 85, "lab07": 65, "lab02": 60, "lab09": 60, "lab03": 55,
    "test_course_notebooks": 60, "test_grader_engine": 25, "test_datasets": 25, "test_batch": 24,
}


def pytest_collection_modifyitems(config, items):
    if not _is_worker(config):
        return
    items.sort(key=lambda item: -_GROUP_SECONDS.get(_group(item), 0))  # stable: each group keeps its order


def pytest_sessionstart(session):
    if not _parallel(session.config):
        return
    from perflab import datasets, stack

    session.config._perflab_was_running = all(row["health"] == "healthy" for row in stack.status())
    stack.ensure()
    stack.prepare_replication()  # the replica's first use would restart the primary under the other processes
    datasets.ensure("tiny", progress=False)
    _fresh_course_build()


_STARTED: set[str] = set()
_T0 = time.monotonic()


def pytest_runtest_logstart(nodeid, location):
    """In a parallel run pytest prints only dots: name each file as its first test starts."""
    path = nodeid.split("::")[0]
    if path in _STARTED:
        return
    _STARTED.add(path)
    import sys

    config = getattr(sys.modules[__name__], "_CONFIG", None)
    if config is not None and _parallel(config):
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.ensure_newline()
            elapsed = int(time.monotonic() - _T0)
            reporter.write_line(f"started {path} at {elapsed // 60}:{elapsed % 60:02d}")


def pytest_configure(config):
    global _CONFIG
    _CONFIG = config
    if _parallel(config) and hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # the order the processes collected: longest groups first


def pytest_sessionfinish(session):
    if _parallel(session.config) and (not getattr(session.config, "_perflab_was_running", True)
                                      or os.environ.get("CI")):
        from perflab import stack

        stack.down()


@pytest.fixture(scope="session")
def course_stack():
    """The running stack. Started if needed, and then stopped at the end of the session (servers and
    Celery workers), so `make test` leaves no process behind; one that was already up stays up."""
    from perflab import stack

    if os.environ.get("PYTEST_XDIST_WORKER"):  # the controller started it and stops it (pytest_sessionfinish)
        yield stack.ensure()
        return
    was_running = all(row["health"] == "healthy" for row in stack.status())
    running = stack.ensure()
    yield running
    if not was_running or os.environ.get("CI"):
        stack.down()


@pytest.fixture(scope="session")
def tiny_data(course_stack):
    from perflab import datasets

    datasets.ensure("tiny", progress=False)
    return "tiny"


@pytest.fixture()
def scratch_db(tiny_data):
    """A throwaway copy of the tiny course data, dropped after the test."""
    from perflab import datasets

    with datasets.throwaway("tiny") as dsn:
        yield dsn


def _fresh_course_build() -> None:
    """What an earlier session left (a figure since renamed, a result since removed) is not this run's."""
    import shutil

    from perflab import paths

    for folder in ("figures", "figure-notes", "results", "claims", "course-run"):
        shutil.rmtree(Path(paths.BUILD_DIR) / folder, ignore_errors=True)


class CourseRun:
    """The lesson notebooks executed at tiny into the session's build folder by `report.run_course`, once each
    per session, whichever test process asks first (others wait for it and read its outcome): the lesson
    tests run them, and the report's audit reads what they left."""

    def __init__(self) -> None:
        self.ran: dict[str, bool] = {}

    def run(self, notebook) -> bool:
        import fcntl
        import json

        from perflab import paths, report

        name = Path(notebook).stem
        if name not in self.ran:
            folder = Path(paths.BUILD_DIR) / "course-run"
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"{name}.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                done = folder / f"{name}.json"
                if done.exists():
                    self.ran[name] = json.loads(done.read_text())["ok"]
                else:
                    failed = report.run_course(scale="tiny", notebooks=[notebook], progress=False, cell_timeout=300)
                    self.ran[name] = not failed
                    done.write_text(json.dumps({"ok": self.ran[name]}))
        return self.ran[name]


@pytest.fixture(scope="session")
def course_run(tiny_data, request):
    if not _is_worker(request.config):  # a parallel run's controller made it fresh before the workers started
        _fresh_course_build()
    return CourseRun()


# `make test` shows each file as it runs (pytest's progress line starts with its path) and, at the end,
# how long each file took (setup, call and teardown of its tests, session fixtures in the first user's).
_FILE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    _FILE_SECONDS[path] = _FILE_SECONDS.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _FILE_SECONDS:
        return
    terminalreporter.section("seconds per test file")
    for path, seconds in sorted(_FILE_SECONDS.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{seconds:8.1f} s  {path}")
    terminalreporter.write_line(f"{sum(_FILE_SECONDS.values()):8.1f} s  in all")
