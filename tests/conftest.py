"""Test session set-up: tiny data, the fast preset, and servers of the tests' own.

`make test` sets these too; the defaults here make a bare `pytest` behave the same. The test
servers keep their state in .perflab/test, so a course running in .perflab/ is never touched.
"""
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PERFLAB_SCALE", "tiny")
os.environ.setdefault("PERFLAB_PRESET", "fast")
os.environ.setdefault("PERFLAB_STATE_DIR", str(ROOT / ".perflab" / "test"))
os.environ.setdefault("PERFLAB_BUILD_DIR", str(ROOT / "build" / "test"))
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def course_stack():
    """The running stack. Started if needed, and then stopped at the end of the session (servers and
    Celery workers), so `make test` leaves no process behind; one that was already up stays up."""
    from perflab import stack

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


class CourseRun:
    """The lesson notebooks executed at tiny into the session's build folder by `report.run_course`, once each:
    test_course_notebooks runs them one by one, and the report's audit reads what they left."""

    def __init__(self) -> None:
        import shutil

        from perflab import paths

        self.ran: dict[str, bool] = {}
        # What an earlier session left (a figure since renamed, a result since removed) is not this run's.
        for folder in ("figures", "figure-notes", "results", "claims"):
            shutil.rmtree(Path(paths.BUILD_DIR) / folder, ignore_errors=True)

    def run(self, notebook) -> bool:
        from perflab import report

        name = Path(notebook).stem
        if name not in self.ran:
            failed = report.run_course(scale="tiny", notebooks=[notebook], progress=False, cell_timeout=300)
            self.ran[name] = not failed
        return self.ran[name]


@pytest.fixture(scope="session")
def course_run(tiny_data):
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
