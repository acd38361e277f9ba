"""The `perflab` command as a user types it: exit codes and messages."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def perflab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "perflab.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_stack_status_and_env(course_stack):
    status = perflab("stack", "status")
    assert status.returncode == 0
    assert "healthy" in status.stdout and "***" in status.stdout
    assert course_stack.postgres.url.split("@")[0].split(":")[-1] not in status.stdout, "password leaked"
    env = perflab("stack", "env")
    assert env.stdout.startswith("export DATABASE_URL=")


def test_labs_check_passes_when_labs_are_current():
    result = perflab("labs", "--check")
    assert result.returncode == 0, result.stdout


def test_grading_a_missing_file_says_so(tmp_path):
    result = perflab("grade", str(tmp_path / "01_nothing.ipynb"), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "01_nothing.ipynb" in result.stdout + result.stderr


def test_grading_a_malformed_notebook_names_the_fix(tmp_path):
    broken = tmp_path / "01_broken.ipynb"
    broken.write_text("{ this is not json")
    result = perflab("grade", str(broken), "--out", str(tmp_path))
    assert result.returncode == 2
    assert "JSON" in result.stdout + result.stderr


def test_data_status_lists_every_scale(course_stack):
    result = perflab("data", "status")
    assert result.returncode == 0
    for scale in ("tiny", "small", "full"):
        assert scale in result.stdout
