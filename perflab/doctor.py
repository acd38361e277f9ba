"""`perflab doctor`: is this laptop ready for the course? The check an instructor sends to every attendee.

    perflab doctor [--scale small] [--seconds 20]      (or: make doctor)

One line per check, green (ok), yellow (warn: the course runs, with a caveat) or red (fail: fix it
first), each red or yellow line with its fix; exit code 0 when nothing is red, 1 otherwise.

1. Python 3.11+;  2. a C compiler;  3. free disk against what the scale needs;  4. the servers' ports;
5. PostgreSQL and Redis start (from their wheels) and answer;  6. the tiny course data builds;
7. a calibration of ~20 s (CPU, PostgreSQL and Redis round trips, a server-side query, disk writes)
   that places the machine in a class relative to the 2-core machine the course's figures come from.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from perflab import paths

# Free disk each scale needs while the course runs: the built template, one notebook's copy of it at a
# time (03 adds indexes: ~2.3x the template), the grader's two throwaway copies, server logs and WAL.
# tiny and small from sizes measured on the reference machine (see docs/WORKSHOP.md), full scaled up.
DISK_NEED_MB = {"tiny": 400, "small": 3_000, "full": 12_000}

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclasses.dataclass
class Line:
    check: str
    status: str  # ok | warn | FAIL
    detail: str
    fix: str = ""


def _line(check: str, good: bool, detail: str, fix: str) -> Line:
    return Line(check, OK if good else FAIL, detail, "" if good else fix)


# ----------------------------------------------------------------------------------------------
# The checks (each returns one or more lines; none raises)


def check_python(version: tuple = tuple(sys.version_info[:3])) -> Line:
    shown = ".".join(map(str, version))
    return _line("Python", version >= (3, 11), f"{shown} ({sys.executable})",
                 "install Python 3.11 or newer, then `make PYTHON=python3.11 setup` (or use environment.yml)")


def check_compiler() -> Line:
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            try:
                out = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=10).stdout
                return _line("C compiler", True, f"{found}: {(out.splitlines() or ['?'])[0]}", "")
            except (OSError, subprocess.SubprocessError):
                continue
    fix = {"Darwin": "xcode-select --install"}.get(platform.system(), "sudo apt install build-essential "
                                                    "(Fedora: sudo dnf install gcc)")
    return _line("C compiler", False, "no cc, gcc or clang on PATH", fix)


def disk_free_mb(folder: Path | None = None) -> int:
    folder = Path(folder or paths.STATE_DIR)
    while not folder.exists():  # .perflab/ may not exist yet: the disk that will hold it
        folder = folder.parent
    return shutil.disk_usage(folder).free // (1024 * 1024)


def check_disk(scale: str, free_mb: int | None = None) -> Line:
    need = DISK_NEED_MB[scale]
    free = disk_free_mb() if free_mb is None else free_mb
    smaller = [s for s in paths.SCALES if DISK_NEED_MB[s] <= free and DISK_NEED_MB[s] < need]
    fix = (f"free {need - free:,} MB on the disk holding {paths.STATE_DIR} (`make clean-data` drops the "
           f"notebooks' copies of the data; `rm -rf .perflab` everything the course stored)"
           + (f", or run the course at a smaller scale: SCALE={smaller[-1]}" if smaller else ""))
    return _line("free disk", free >= need, f"{free:,} MB free, scale '{scale}' needs {need:,} MB", fix)


def check_ports() -> list[Line]:
    from perflab import stack

    running = stack._current()
    lines = []
    for service, env_var, default in ((running.postgres, "PERFLAB_PG_PORT", stack.DEFAULT_PG_PORT),
                                      (running.redis, "PERFLAB_REDIS_PORT", stack.DEFAULT_REDIS_PORT)):
        label = f"port ({'PostgreSQL' if service.name == 'postgres' else 'Redis'})"
        if not service.managed:
            lines.append(Line(label, OK, f"{service.masked_url} is your own server (from the environment)"))
            continue
        ours = service.pid and stack._pid_alive(service.pid) and stack._is_healthy(service)
        pinned = os.environ.get(env_var)
        if pinned:
            port = int(pinned)
            if ours and service.port == port:
                lines.append(Line(label, OK, f"{port} (from {env_var}): the course's own server"))
            elif stack.port_is_free(port):
                lines.append(Line(label, OK, f"{port} (from {env_var}) is free"))
            else:
                lines.append(Line(label, FAIL, f"{port} (from {env_var}) is in use by {stack._who_listens(port)}",
                                  f"stop that program, or unset {env_var} so that perflab picks a free port"))
            continue
        if ours:
            lines.append(Line(label, OK, f"{service.port}: the course's own server"))
            continue
        free = next((p for p in range(default, default + stack.PORT_SEARCH_SPAN) if stack.port_is_free(p)), None)
        if free is None:
            lines.append(Line(label, FAIL, f"no free port in {default}-{default + stack.PORT_SEARCH_SPAN - 1}",
                              f"set {env_var} to a free port"))
        else:
            lines.append(Line(label, OK, f"{free} is free" + ("" if free == default else f" ({default} is taken)")))
    return lines


def check_servers() -> list[Line]:
    from perflab import stack

    try:
        started = time.perf_counter()
        running = stack.ensure()
        seconds = time.perf_counter() - started
        found = stack.versions(running)
    except Exception as exc:  # noqa: BLE001 - shown as a red line with the message's own fix
        message = str(exc).strip()
        first, _, rest = message.partition("\nFix: ")
        return [Line("servers", FAIL, first.splitlines()[0][:200],
                     rest.splitlines()[0] if rest else "see `perflab stack up` for the server log")]
    return [
        _line("PostgreSQL", bool(found.get("postgresql")), f"{found.get('postgresql')} on {running.postgres.masked_url}"
              f" (ready in {seconds:.1f} s)", "`perflab stack status`; `rm -rf .perflab/postgres` for a fresh server"),
        _line("Redis", bool(found.get("redis")), f"{found.get('redis')} on {running.redis.masked_url}",
              "`perflab stack status`; `rm -rf .perflab/redis` for a fresh server"),
    ]


def check_data() -> Line:
    from perflab import datasets

    try:
        report = datasets.ensure("tiny", progress=False)
    except Exception as exc:  # noqa: BLE001
        return Line("course data", FAIL, f"the tiny data did not build: {type(exc).__name__}: {str(exc)[:160]}",
                    "`perflab data build --scale tiny --force`; if it fails again, `rm -rf .perflab/postgres`")
    done = f"built in {report.seconds:.1f} s" if report.built else "already built"
    return Line("course data", OK, f"tiny data ({sum(report.rows.values()):,} rows) {done}")


# ----------------------------------------------------------------------------------------------
# Calibration: a few reference measurements, each compared with the reference machine's

# Medians measured on the reference machine (2 cores shared by 5 users, `perflab doctor` on 2026-12-05,
# see docs/WORKSHOP.md). Larger is slower for every one of them.
REFERENCE_MS = {
    "python loop (200k adds)": 5.1,
    "PostgreSQL round trip": 0.10,
    "PostgreSQL query (sum over 1M rows)": 114.0,
    "Redis round trip": 0.10,
    "disk write (16 MB + fsync)": 12.4,
}
# speed relative to the reference machine (geometric mean of reference/measured) -> class
CLASSES = ((1.5, "fast: quicker than the reference machine"),
           (0.67, "reference: like the 2-core machine the course's figures come from"),
           (0.33, "slow: the course runs; expect timed checks to say 'inconclusive — rerun' more often"),
           (0.0, "very slow: use SCALE=tiny and close other programs"))


def _python_loop() -> None:
    total = 0
    for i in range(200_000):
        total += i


def _disk_write(folder: Path) -> Callable[[], None]:
    block = os.urandom(1024 * 1024)

    def write() -> None:
        target = folder / "doctor-disk-probe.bin"
        with open(target, "wb") as handle:
            for _ in range(16):
                handle.write(block)
            handle.flush()
            os.fsync(handle.fileno())
        target.unlink()

    return write


def _median_ms(fn: Callable[[], None], seconds: float) -> float:
    fn()  # warm-up
    samples, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 3:
        started = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return statistics.median(samples)


def calibrate(seconds: float = 20.0) -> dict:
    """Median ms of each reference measurement, ``seconds`` shared between them, and the machine class."""
    from perflab import stack

    running = stack.ensure()
    each = seconds / len(REFERENCE_MS)
    paths.STATE_DIR.mkdir(parents=True, exist_ok=True)
    measured = {}
    with stack.connect(dsn=running.dsn()) as conn:
        measured["python loop (200k adds)"] = _median_ms(_python_loop, each)
        measured["PostgreSQL round trip"] = _median_ms(lambda: conn.execute("SELECT 1").fetchone(), each)
        measured["PostgreSQL query (sum over 1M rows)"] = _median_ms(
            lambda: conn.execute("SELECT sum(i) FROM generate_series(1, 1000000) AS i").fetchone(), each)
    client = stack.redis_client(running.redis_url)
    try:
        measured["Redis round trip"] = _median_ms(client.ping, each)
    finally:
        client.close()
    measured["disk write (16 MB + fsync)"] = _median_ms(_disk_write(paths.STATE_DIR), each)
    speed = statistics.geometric_mean(REFERENCE_MS[k] / max(v, 1e-6) for k, v in measured.items())
    label = next(text for floor, text in CLASSES if speed >= floor)
    return {"measured_ms": measured, "speed": speed, "class": label.split(":")[0], "description": label}


def check_calibration(seconds: float) -> list[Line]:
    from perflab import classview

    try:
        result = calibrate(seconds)
    except Exception as exc:  # noqa: BLE001
        return [Line("calibration", FAIL, f"{type(exc).__name__}: {str(exc)[:160]}", "fix the red lines above first")]
    classview.save_machine_class(result)  # `perflab share` reports the class
    lines = [Line(f"  {name}", OK, f"{ms:,.3f} ms (reference machine: {REFERENCE_MS[name]:g} ms)")
             for name, ms in result["measured_ms"].items()]
    slow = result["speed"] < 0.67
    lines.append(Line("machine class", WARN if slow else OK,
                      f"{result['description']} ({result['speed']:.2f}x the reference speed)",
                      "close other programs, plug the laptop in, and run at SCALE=tiny if `make run` is too slow"
                      if slow else ""))
    return lines


# ----------------------------------------------------------------------------------------------


def run(scale: str | None = None, seconds: float = 20.0, *, start_servers: bool = True) -> list[Line]:
    """Every check in order. Servers, data and calibration only when ``start_servers``."""
    scale = scale or paths.current_scale()
    lines = [check_python(), check_compiler(), check_disk(scale), *check_ports()]
    if start_servers:
        servers = check_servers()
        lines += servers
        if all(line.status != FAIL for line in servers):
            lines.append(check_data())
            lines += check_calibration(seconds) if seconds > 0 else []
    return lines


def exit_code(lines: list[Line]) -> int:
    return 1 if any(line.status == FAIL for line in lines) else 0


def render(lines: list[Line], colour: bool = False) -> str:
    paint = {OK: "\033[32m", WARN: "\033[33m", FAIL: "\033[31m"} if colour else {}
    width = max(len(line.check) for line in lines)
    out = []
    for line in lines:
        mark = f"{paint.get(line.status, '')}{line.status:<4}{chr(27) + '[0m' if colour else ''}"
        out.append(f"{mark}  {line.check:<{width}}  {line.detail}")
        if line.fix:
            out.append(f"{'':4}  {'':<{width}}  fix: {line.fix}")
    failed = sum(line.status == FAIL for line in lines)
    out.append("")
    out.append(f"{failed} red line(s): fix them, then run `make doctor` again" if failed
               else "ready for the course")
    return "\n".join(out)
