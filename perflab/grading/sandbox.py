"""The narrow channel between the grader and learner code: call a function over a pipe, get JSON back.

Grader side::

    with Sandbox.start("submission", jail_limits, env={"DATABASE_URL": dsn}) as box:
        box.load("submission", answers, namespace="perflab.topics.t02_n_plus_one.rig:NAMESPACE")
        page = box.call("submission", "recent_orders_page", 20, driver="perflab.topics.t02_n_plus_one.rig:with_session")

- ``load`` sends the recorded answers (functions as source text, values as JSON) into a *slot* of the
  sandbox process, where they are re-created in a fresh namespace pre-filled with the topic's
  ``NAMESPACE`` (what the lab says a function may use without importing it).
- ``call`` asks the sandbox to call one answer with JSON arguments, either directly or through a
  *driver*: a function of the course (``module:function``, always under ``perflab.``, chosen by the
  check, never by the learner) that receives the slot's answers and builds what the call needs on the
  sandbox's side (a SQLAlchemy session on the sandbox's own database role, a Redis client for the
  sandbox's own server, an event loop, ...). Only JSON comes back: the value, or the exception's type
  and message, which the grader raises as `SubmissionError`. Nothing the sandbox returns is ever
  unpickled or executed by the grader.
- A call that does not return in time kills the sandbox's whole process tree (`Jail.kill_all`); the next
  call starts a fresh process and re-loads the slots, so one infinite loop costs one check, not the run.
- Timings of a call are taken by the grader around ``call`` (the round trip), never reported by the
  sandbox, so a submission cannot fake its own speed. The round trip adds about 0.1–0.3 ms.

The sandbox side (`serve`) runs in the jail: it keeps the two pipe ends as private file descriptors,
points its own stdin at /dev/null and stdout/stderr at a capped log file, then answers requests one
by one. Any exception inside a call is the learner's; a dead sandbox is reported as such.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import decimal
import importlib
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from perflab.grading.jail import Jail, Limits, jail

__all__ = ["Sandbox", "SandboxError", "SandboxCallError", "SandboxTimeout", "current", "to_json"]

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_DRIVER_PACKAGE = "perflab."


class SandboxError(Exception):
    """The sandbox could not do what was asked (it died, or answered nonsense)."""


class SandboxCallError(SandboxError):
    """The learner's code raised: ``type_name`` and ``message`` are the exception's."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class SandboxTimeout(SandboxError):
    """The call did not return in time; the sandbox was killed."""


def to_json(value: Any) -> Any:
    """A JSON-able copy of ``value`` (tuples become lists, Decimal and datetimes strings, sets sorted lists).

    Applied alike to the reference's and the submission's results, so equal answers stay equal."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_json(v) for v in value), key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"a {type(value).__name__} cannot be sent back to the grader (return plain data: "
                    "lists, dicts, str, numbers)")


# ---------------------------------------------------------------------------------------------
# Grader side


class Sandbox:
    """A sandbox process in a jail; see the module docstring."""

    def __init__(self, box: Jail, name: str, log_path: Path) -> None:
        self.box = box
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._loads: list[dict] = []  # replayed into a restarted process
        self.calls = 0
        self.restarts = 0

    @classmethod
    @contextlib.contextmanager
    def start(cls, name: str, limits: Limits, env: Mapping[str, str] | None = None) -> Iterator["Sandbox"]:
        with jail(name, limits, env) as box:
            sandbox = cls(box, name, box.workdir.parent / f"{box.workdir.name}.log")
            try:
                yield sandbox
            finally:
                sandbox.close()
                with contextlib.suppress(OSError):
                    sandbox.log_path.unlink()

    @property
    def mode(self) -> str:
        return self.box.mode

    def _spawn(self) -> None:
        log = open(self.log_path, "ab")
        try:
            self.proc = self.box.popen(
                [sys.executable, "-I", "-m", "perflab.grading.sandbox"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, bufsize=0,
            )
        finally:
            log.close()
        self._last_load_reply: dict = {}
        for message in self._loads:
            self._last_load_reply = self._request(message, timeout=60)

    def _ensure(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.restarts += 1
                self.box.kill_all()
            self._spawn()

    def _request(self, message: dict, timeout: float) -> dict:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        data = json.dumps(message).encode() + b"\n"
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise SandboxError(self._died("before it could be asked")) from None
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        size = 0
        fd = self.proc.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.box.kill_all()
                self.proc = None
                raise SandboxTimeout(f"did not return within {timeout:g} s (an infinite loop?); its process was stopped")
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise SandboxError(self._died("while it ran"))
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_MESSAGE_BYTES:
                self.box.kill_all()
                self.proc = None
                raise SandboxError(f"its answer was larger than {MAX_MESSAGE_BYTES // (1 << 20)} MiB; it was stopped")
            if chunk.endswith(b"\n"):
                break
        try:
            reply = json.loads(b"".join(chunks))
            if not isinstance(reply, dict):
                raise ValueError("not an object")
        except ValueError:
            raise SandboxError("the sandbox answered something that is not the grader's protocol "
                               "(did the code write to the grader's channel?)") from None
        return reply

    def _died(self, when: str) -> str:
        code = self.proc.poll() if self.proc else None
        self.proc = None
        how = f"exit code {code}" if code is not None and code >= 0 else (f"signal {-code}" if code else "unknown")
        return f"the process running your code ended {when} ({how}: os._exit, a crash, or a memory limit?)"

    def load(self, slot: str, answers: Mapping[str, Any], *, namespace: str | None = None) -> dict[str, str]:
        """Re-create ``answers`` in ``slot``: ``{name: RecordedFunction | JSON value}``. Returns problems."""
        from perflab.grading.grader import RecordedFunction

        payload = {}
        for name, value in answers.items():
            if isinstance(value, RecordedFunction):
                payload[name] = {"kind": "function", "name": value.name, "source": value.source}
            else:
                payload[name] = {"kind": "value", "value": value}
        message = {"op": "load", "slot": slot, "answers": payload, "namespace": namespace}
        self._loads.append(message)
        if self.proc is None or self.proc.poll() is not None:
            self._ensure()  # a new process: every load so far (this one included) is replayed into it
            reply = self._last_load_reply
        else:
            reply = self._request(message, timeout=60)
        return dict(reply.get("problems", {}))

    def call(self, slot: str, target: str, *args: Any, driver: str | None = None, timeout: float = 30.0,
             **kwargs: Any) -> Any:
        """``target(*args, **kwargs)`` from ``slot``, or ``driver(answers, *args, **kwargs)``; JSON back."""
        if driver is not None and not driver.startswith(_DRIVER_PACKAGE):
            raise ValueError(f"a driver must be course code under {_DRIVER_PACKAGE!r}, not {driver!r}")
        self._ensure()
        self.calls += 1
        reply = self._request({"op": "call", "slot": slot, "target": target, "driver": driver,
                               "args": to_json(list(args)), "kwargs": to_json(kwargs)}, timeout=timeout)
        if reply.get("ok"):
            return reply.get("value")
        raise SandboxCallError(str(reply.get("type", "Error"))[:100], str(reply.get("message", ""))[:2000])

    def output(self) -> str:
        """What the sandbox printed, cut to the limit with a note."""
        limit = self.box.limits.output_bytes
        try:
            with open(self.log_path, "rb") as f:
                data = f.read(limit + 1)
                total = os.fstat(f.fileno()).st_size
        except OSError:
            return ""
        text = data[:limit].decode("utf-8", "replace")
        if total > limit:
            text += f"\n[… output cut: {total:,} bytes printed, the first {limit:,} kept]"
        return text

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.proc.stdin.close()
        self.box.kill_all()
        self.proc = None


# ---------------------------------------------------------------------------------------------
# Sandbox side


class _Current:
    """What a driver sees inside the sandbox: its slots, a state dict that lasts across calls, its env."""

    def __init__(self) -> None:
        self.slots: dict[str, dict[str, Any]] = {}
        self.state: dict[str, Any] = {}

    @property
    def dsn(self) -> str | None:
        return os.environ.get("DATABASE_URL")

    @property
    def redis_url(self) -> str | None:
        return os.environ.get("REDIS_URL")


_CURRENT = _Current()


def current() -> _Current:
    """Inside the sandbox: the answers of each slot, a per-process ``state`` dict, ``dsn`` and ``redis_url``."""
    return _CURRENT


class Answers:
    """A slot's answers with attribute access (``answers.recent_orders_page``) for drivers."""

    def __init__(self, slot: str, values: dict[str, Any]) -> None:
        self._slot = slot
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"{name} is not defined in {self._slot}") from None

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)

    def __contains__(self, name: str) -> bool:
        return name in self._values


def _resolve(spec: str) -> Any:
    module, _, attribute = spec.partition(":")
    value = importlib.import_module(module)
    for part in attribute.split(".") if attribute else []:
        value = getattr(value, part)
    return value


def _load(message: dict) -> dict:
    namespace = dict(_resolve(message["namespace"])) if message.get("namespace") else {}
    scope: dict[str, Any] = {"__name__": "submission", "__builtins__": __builtins__, **namespace}
    problems: dict[str, str] = {}
    for name, entry in message["answers"].items():
        if entry["kind"] == "value":
            scope[name] = entry["value"]
            continue
        try:
            exec(compile(entry["source"], f"<your {name}>", "exec"), scope)
            if entry["name"] != name:
                scope[name] = scope[entry["name"]]
            if not callable(scope.get(name)):
                problems[name] = f"the source recorded for {name} does not define {name}"
        except BaseException as exc:  # noqa: BLE001 - reported to the learner
            problems[name] = f"could not re-create {name} from your notebook's source: {type(exc).__name__}: {exc}"
    _CURRENT.slots[message["slot"]] = scope
    return {"ok": True, "problems": problems}


def _call(message: dict) -> dict:
    scope = _CURRENT.slots.get(message["slot"], {})
    if message.get("driver"):
        value = _resolve(message["driver"])(Answers(message["slot"], scope), *message["args"], **message["kwargs"])
    else:
        target = scope.get(message["target"])
        if not callable(target):
            raise NameError(f"{message['target']} is not defined")
        value = target(*message["args"], **message["kwargs"])
    return {"ok": True, "value": to_json(value)}


def serve() -> None:
    """Answer the grader's requests on the inherited pipes until it closes them."""
    import signal

    channel_in = os.fdopen(os.dup(0), "rb", buffering=0)
    channel_out = os.fdopen(os.dup(1), "wb", buffering=0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)  # the learner's prints go to the capped log, never into the channel
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    with contextlib.suppress(Exception):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the file-size limit, writes fail instead
    reader = iter(channel_in.readline, b"")
    for line in reader:
        try:
            message = json.loads(line)
            reply = _load(message) if message.get("op") == "load" else _call(message)
        except BaseException as exc:  # noqa: BLE001 - the learner's, sent back as type and message
            if isinstance(exc, KeyboardInterrupt):
                raise
            text = str(exc).strip().splitlines()
            reply = {"ok": False, "type": type(exc).__name__, "message": text[0][:2000] if text else ""}
        try:
            data = json.dumps(reply, allow_nan=False).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            data = json.dumps({"ok": False, "type": "TypeError", "message": str(exc)}).encode() + b"\n"
        channel_out.write(data)


if __name__ == "__main__":
    serve()
