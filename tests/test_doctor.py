"""`perflab doctor`: green here; a busy port and a too-small disk each give a red line with its fix."""
import socket
import subprocess
import sys
from pathlib import Path

from perflab import doctor

ROOT = Path(__file__).resolve().parent.parent


def red(lines, check):
    found = [line for line in lines if line.check == check]
    assert found, [line.check for line in lines]
    return found[0]


def test_a_busy_pinned_port_is_a_red_line_with_its_fix(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("PERFLAB_PG_PORT", str(port))
        lines = doctor.run("tiny", start_servers=False)
    line = red(lines, "port (PostgreSQL)")
    assert line.status == doctor.FAIL and str(port) in line.detail and "in use" in line.detail, line
    assert "unset PERFLAB_PG_PORT" in line.fix
    assert doctor.exit_code(lines) == 1
    text = doctor.render(lines)
    assert f"fix: {line.fix}" in text and "red line(s)" in text


def test_a_too_small_disk_is_a_red_line_with_its_fix(monkeypatch):
    monkeypatch.setattr(doctor, "disk_free_mb", lambda folder=None: 1_000)  # a simulated laptop: 1 GB free
    lines = doctor.run("small", start_servers=False)
    line = red(lines, "free disk")
    assert line.status == doctor.FAIL and "1,000 MB free" in line.detail and "needs" in line.detail, line
    assert "make clean-data" in line.fix and "SCALE=tiny" in line.fix
    assert doctor.exit_code(lines) == 1
    assert red(doctor.run("tiny", start_servers=False), "free disk").status == doctor.OK


def test_doctor_passes_here_and_places_the_machine_in_a_class(course_stack):
    result = subprocess.run([sys.executable, "-m", "perflab.cli", "doctor", "--scale", "tiny", "--seconds", "3"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ready for the course" in result.stdout
    for check in ("Python", "C compiler", "free disk", "PostgreSQL", "Redis", "course data", "machine class"):
        assert check in result.stdout, check
    assert "FAIL" not in result.stdout


def test_stack_status_shows_the_disk_used(tiny_data):
    result = subprocess.run([sys.executable, "-m", "perflab.cli", "stack", "status"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "disk" in result.stdout.splitlines()[0]
    assert "\ndisk: " in result.stdout and "perflab_tiny" in result.stdout and " MB" in result.stdout
