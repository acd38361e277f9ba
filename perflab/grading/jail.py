"""Where learner code runs: a process with least privilege, fixed limits and a tree that can be killed whole.

The grader never runs a submission in its own process. Everything the learner wrote (the notebook's
kernel, and every function a check calls) is started through `Jail.command`, which prefixes the real
command with ``python -m perflab.grading.jail CONFIG --``. That small wrapper runs first, still with the
grader's privileges, and then ``exec``s the real command (so the pid stays the same) after it has:

1. joined the run's cgroup (cgroup v2: ``cgroup.kill`` ends every process of the run, detached or not;
   v1 ``pids``: a cap on processes), when the machine has one the grader may write;
2. started a new session (its own process group, no controlling terminal);
3. set the resource limits (address space, CPU seconds, file size, open files, processes) and
   ``PR_SET_NO_NEW_PRIVS`` (no setuid program can give privileges back);
4. when the grader runs as root: dropped to an unprivileged system user of its own
   (``perflab-sbx-NN``; one per concurrent run, so two runs cannot signal each other), which cannot
   write the project, the installed package, ``build/`` or ``.perflab/``, and cannot read the stack's
   passwords (``.perflab/**/stack.json`` is 0600 root);
5. replaced the environment with an allow-list (`Jail.env`), and moved to a private working folder.

As a normal user (a learner's own laptop) step 4 is skipped: the code runs as that user with the same
limits, and the report says so (``mode`` is ``"same-user"`` rather than ``"dedicated user"``).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator, Mapping

__all__ = ["Limits", "Jail", "jail", "running_as_root", "MODE_DEDICATED", "MODE_SAME_USER"]

MODE_DEDICATED = "dedicated user"
MODE_SAME_USER = "same-user"

# Sandbox users: a small pool, one claimed per concurrent sandbox (flock on a root-only folder).
USER_PREFIX = "perflab-sbx-"
USER_POOL = 16
_SLOTS_DIR = Path(tempfile.gettempdir()) / "perflab-sandbox-slots"
_SETTLE_S = 10.0  # how long a claimed user may take to have no process left (init reaps zombies every ~2 s here)
_CGROUP_V2_ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
_CGROUP_V1_PIDS = Path("/sys/fs/cgroup/pids")

# What the sandboxed process may see of the environment: nothing of the grader's but these.
ENV_PASSTHROUGH = ("LANG", "LC_ALL", "TZ", "PERFLAB_SCALE", "PERFLAB_PRESET")


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed process tree. Defaults live in the lab spec; an instructor may
    override any of them (``perflab grade --limit address_space_mb=2048``)."""

    address_space_mb: int = 3072     # RLIMIT_AS: a memory flood ends in MemoryError, not in the OOM killer
    cpu_seconds: int = 900           # RLIMIT_CPU: per process
    processes: int = 256             # RLIMIT_NPROC for the dedicated user (threads count), pids.max in a cgroup
    file_size_mb: int = 256          # RLIMIT_FSIZE: no file (nor the captured output) grows past this
    open_files: int = 1024           # RLIMIT_NOFILE
    output_bytes: int = 1_000_000    # captured stdout/stderr kept for the report; the rest is cut with a note

    def override(self, **changes: int) -> "Limits":
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown sandbox limit(s) {sorted(unknown)}; known: {sorted(asdict(self))}")
        return replace(self, **{k: int(v) for k, v in changes.items()})

    def describe(self) -> str:
        return (f"{self.address_space_mb} MiB address space, {self.cpu_seconds} s CPU, {self.processes} processes, "
                f"{self.file_size_mb} MiB per file, {self.output_bytes // 1000} kB of output kept")


def running_as_root() -> bool:
    return os.name == "posix" and os.geteuid() == 0


# ---------------------------------------------------------------------------------------------
# Users and cgroups (grader side, root only)


def _ensure_user(name: str) -> tuple[int, int]:
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True, text=True)
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


@contextlib.contextmanager
def _claimed_user() -> Iterator[tuple[str, int, int]]:
    """A sandbox user no other grading run holds, for as long as the block lasts, and with no process left.

    A user whose processes are not all gone is skipped: a killed process stays a zombie until init reaps it,
    and zombies still count against the user's RLIMIT_NPROC (seen: after a process flood, the next kernel of
    that user could not start its threads and hung until the 60 s start-up limit).
    """
    _SLOTS_DIR.mkdir(mode=0o700, exist_ok=True)
    os.chmod(_SLOTS_DIR, 0o700)
    while True:
        for number in range(USER_POOL):
            handle = open(_SLOTS_DIR / f"{number:02d}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            try:
                name = f"{USER_PREFIX}{number:02d}"
                uid, gid = _ensure_user(name)
                if _kill_uid(uid, settle_s=_SETTLE_S):  # whatever an earlier, crashed run of this user left
                    continue  # still not reaped: another user
                yield name, uid, gid
                _kill_uid(uid)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(0.5)  # all taken: wait for a run to end


def _grant_interpreter_traversal() -> None:
    """Let the sandbox user run this interpreter and read its standard library (o+x on each parent folder:
    search, not list), e.g. when Python lives under /root/.pyenv."""
    for target in {Path(os.path.realpath(sys.executable)), Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}:
        for parent in target.parents:
            with contextlib.suppress(OSError):
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)


def _uid_pids(uid: int) -> list[int]:
    """Every process whose real uid is ``uid``, zombies included."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                if int(line.split()[1]) == uid:
                    found.append(int(entry.name))
                break
    return found


def _kill_uid(uid: int, settle_s: float = 1.0) -> int:
    """SIGKILL every process whose real uid is ``uid`` until none is left, or ``settle_s`` has passed.
    Returns how many are left (zombies not yet reaped count: they still count against RLIMIT_NPROC)."""
    deadline = time.monotonic() + settle_s
    while True:
        victims = _uid_pids(uid)
        if not victims or time.monotonic() > deadline:
            return len(victims)
        for pid in victims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


class _Cgroup:
    """A cgroup for one sandbox: v2 where writable (kill the whole tree at once), plus v1 pids.max."""

    def __init__(self, name: str, max_pids: int) -> None:
        self.v2: Path | None = None
        self.v1_pids: Path | None = None
        for root in _CGROUP_V2_ROOTS:
            if (root / "cgroup.procs").exists() and (root / "cgroup.controllers").exists():
                with contextlib.suppress(OSError):
                    path = root / name
                    path.mkdir(exist_ok=True)
                    if (path / "cgroup.kill").exists():
                        self.v2 = path
                        break
                    path.rmdir()
        if (_CGROUP_V1_PIDS / "cgroup.procs").exists():
            with contextlib.suppress(OSError):
                path = _CGROUP_V1_PIDS / name
                path.mkdir(exist_ok=True)
                (path / "pids.max").write_text(str(max_pids))
                self.v1_pids = path

    @property
    def paths(self) -> list[str]:
        return [str(p) for p in (self.v2, self.v1_pids) if p is not None]

    def pids(self) -> list[int]:
        for path in (self.v2, self.v1_pids):
            if path is not None:
                with contextlib.suppress(OSError):
                    return [int(p) for p in (path / "cgroup.procs").read_text().split()]
        return []

    def kill(self) -> None:
        if self.v2 is not None:
            with contextlib.suppress(OSError):
                (self.v2 / "cgroup.kill").write_text("1")
        for pid in self.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        for path in (self.v2, self.v1_pids):
            if path is None:
                continue
            for _ in range(40):
                try:
                    path.rmdir()
                    break
                except OSError:
                    self.kill()
                    time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# The jail (grader side)


@dataclass
class Jail:
    """One sandbox: a working folder, a user (when root), a cgroup, limits, an environment allow-list.

    Use it as a context manager (`jail`); ``command(argv)`` gives the argv to start a process in it;
    ``kill_all()`` ends every process it started.
    """

    name: str
    workdir: Path
    limits: Limits
    env: dict[str, str]
    user: str | None = None
    uid: int | None = None
    gid: int | None = None
    cgroup: _Cgroup | None = None
    started: list[subprocess.Popen] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return MODE_DEDICATED if self.user else MODE_SAME_USER

    def command(self, argv: list[str], *, connection_file_arg: bool = False) -> list[str]:
        config = {
            "user": self.user, "uid": self.uid, "gid": self.gid, "cwd": str(self.workdir), "env": self.env,
            "cgroups": self.cgroup.paths if self.cgroup else [], "limits": asdict(self.limits),
            "connection_file_arg": connection_file_arg,
        }
        return [sys.executable, "-I", "-m", "perflab.grading.jail", json.dumps(config), "--", *argv]

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(self.command(argv), **kwargs)
        self.started.append(proc)
        return proc

    def alive(self) -> list[int]:
        """Pids of processes still running in this jail (as far as this machine lets us tell)."""
        pids = set(self.cgroup.pids()) if self.cgroup else set()
        pids |= {proc.pid for proc in self.started if proc.poll() is None}
        return sorted(pids)

    def kill_all(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill()
        if self.uid is not None:
            _kill_uid(self.uid)
        for proc in self.started:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)  # its session (same-user mode without a cgroup)
            with contextlib.suppress(OSError):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)


def sandbox_env(extra: Mapping[str, str], home: Path) -> dict[str, str]:
    """The allow-listed environment: a plain PATH, a private HOME, the course's scale and preset, ``extra``."""
    venv_bin = str(Path(sys.executable).parent)
    env = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "MPLBACKEND": "Agg",
           "PYTHONDONTWRITEBYTECODE": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1",
           "MPLCONFIGDIR": str(home / ".matplotlib"), "IPYTHONDIR": str(home / ".ipython"),
           "JUPYTER_RUNTIME_DIR": str(home / ".jupyter-runtime")}
    env.update({k: os.environ[k] for k in ENV_PASSTHROUGH if k in os.environ})
    env.update({k: str(v) for k, v in extra.items()})
    return env


@contextlib.contextmanager
def jail(name: str, limits: Limits, env: Mapping[str, str] | None = None) -> Iterator[Jail]:
    """A jail for one sandbox; on exit every process in it is killed and its folder removed."""
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix=f"perflab-{name}-"))
        stack.callback(shutil.rmtree, workdir, True)
        user = uid = gid = None
        if running_as_root():
            _grant_interpreter_traversal()
            user, uid, gid = stack.enter_context(_claimed_user())
            os.chown(workdir, uid, gid)
        os.chmod(workdir, 0o700)
        cgroup = None
        if running_as_root():
            cgroup = _Cgroup(f"perflab-{name}-{os.getpid()}-{workdir.name[-8:]}", limits.processes)
            stack.callback(cgroup.remove)
        box = Jail(name=name, workdir=workdir, limits=limits, env=sandbox_env(env or {}, workdir),
                   user=user, uid=uid, gid=gid, cgroup=cgroup)
        stack.callback(box.kill_all)
        yield box


# ---------------------------------------------------------------------------------------------
# The wrapper (runs first in the new process, then execs the real command)


def _no_new_privs() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS


def _enter(config: dict, argv: list[str]) -> None:
    import resource

    for path in config["cgroups"]:
        with contextlib.suppress(OSError):
            Path(path, "cgroup.procs").write_text(str(os.getpid()))
    with contextlib.suppress(OSError):
        os.setsid()
    uid, gid, cwd = config["uid"], config["gid"], config["cwd"]
    if config["connection_file_arg"] and "-f" in argv:
        # The kernel's connection file is the grader's (0600): give the sandbox a copy of its own.
        index = argv.index("-f") + 1
        copy = Path(cwd) / "kernel.json"
        shutil.copyfile(argv[index], copy)
        if uid is not None:
            os.chown(copy, uid, gid)
        os.chmod(copy, 0o600)
        argv[index] = str(copy)
    limits = config["limits"]
    mib = 1024 * 1024
    for which, value in ((resource.RLIMIT_AS, limits["address_space_mb"] * mib),
                         (resource.RLIMIT_CPU, limits["cpu_seconds"]),
                         (resource.RLIMIT_FSIZE, limits["file_size_mb"] * mib),
                         (resource.RLIMIT_NOFILE, limits["open_files"]),
                         (resource.RLIMIT_CORE, 0)):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, (value, value))
    if uid is not None:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    _no_new_privs()
    if uid is not None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    os.chdir(cwd)
    if config["connection_file_arg"]:
        # A kernel talks over its sockets: its stdin, stdout and stderr are not the grader's.
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(Path(cwd) / "kernel.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
    os.execve(argv[0], argv, config["env"])


def main(args: list[str]) -> None:
    if len(args) < 3 or args[1] != "--":
        raise SystemExit("usage: python -m perflab.grading.jail CONFIG_JSON -- COMMAND...")
    _enter(json.loads(args[0]), list(args[2:]))


if __name__ == "__main__":
    main(sys.argv[1:])
