"""A slow HTTP service on 127.0.0.1 that counts how many requests it is serving at once.

The async lesson needs something to wait for: a dependency that answers each request after a known
delay, sometimes fails, and can say afterwards how much concurrency it actually saw. The client's
own view ("I started 200 tasks") is not evidence; the server's count of requests in flight is.

    from perflab.topics.t06_async import slowservice

    with slowservice.running(latency_ms=50) as svc:     # a separate process, on a free port
        svc.url                      # http://127.0.0.1:PORT
        # GET {svc.url}/items/{id}  -> {"id": id, "value": ...} after ~50 ms (or HTTP 500)
        svc.max_in_flight            # the most requests it was ever serving at once
        svc.reset()                  # zero the counters (between experiments)
        svc.configure(latency_ms=10, failure_rate=0.1)

Behaviour, all deterministic so that a grader can know the right answer:

* ``latency_ms`` (± ``jitter_ms``, uniform, drawn per item id from ``seed``) before each answer;
* ``failure_rate``: the share of item ids that always answer HTTP 500 (``svc.fails(id)`` says which);
* ``svc.expected(id)`` is the JSON body a successful ``/items/{id}`` returns.

The counters (requests, failures, in flight, max in flight, and on request each request's start and
end since the last reset, for a timeline plot, or the item ids requested) are read, reset and
configured over the service's **stdin/stdout pipe**, which only the process that started it holds
(``svc.stats()``, ``svc.reset()``, ``svc.configure(...)`` use it). A lesson's service also answers
``GET /stats`` (read-only counters, for code inside an event loop); a grader starts it with
``http_control=False``: then its only HTTP route is ``/items/{id}``, so the code under test can read
nothing but items and change nothing. ``salt`` (set through the pipe, never shown) replaces the items'
public values with ones only the starter of the service can compute (`item_value(id, salt)`), so an
answer cannot be right without asking the service.

Why a separate process: the client under test runs its own event loop; a server sharing its process
would share its GIL and its loop's scheduling, and its latency would depend on the client's load.
Run it directly: ``python -m perflab.topics.t06_async.slowservice --latency-ms 50``; it prints ``listening <port>``
(with ``--control-stdin`` it then reads one JSON command per line on stdin, answers one JSON line on
stdout, and exits when stdin closes: that is how `start` runs it).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator

from perflab import paths

__all__ = ["running", "SlowService", "item_value", "item_fails", "item_latency_s", "ServiceError"]

MAX_INTERVALS = 20_000  # request timeline kept for plots; older entries are dropped beyond this


class ServiceError(RuntimeError):
    """The service could not be started or reached."""


# ------------------------------------------------------------------------------------------------
# Deterministic per-item behaviour (shared by the server and by whoever checks its answers)
# ------------------------------------------------------------------------------------------------

def _rng(seed: int, item_id: int, purpose: str) -> random.Random:
    return random.Random(f"{seed}:{purpose}:{item_id}")


def item_value(item_id: int, salt: str = "") -> dict:
    """The body of a successful ``GET /items/{item_id}`` (with the service's ``salt``, if it has one)."""
    if not salt:
        return {"id": item_id, "value": (item_id * 7919) % 10_007}
    digest = hmac.new(salt.encode(), str(item_id).encode(), hashlib.sha256).hexdigest()
    return {"id": item_id, "value": int(digest[:12], 16) % 10_007}


def item_fails(item_id: int, failure_rate: float, seed: int) -> bool:
    """Whether ``/items/{item_id}`` answers HTTP 500 under this failure rate and seed."""
    return failure_rate > 0 and _rng(seed, item_id, "fail").random() < failure_rate


def item_latency_s(item_id: int, latency_ms: float, jitter_ms: float, seed: int) -> float:
    if jitter_ms <= 0:
        return latency_ms / 1000
    offset = _rng(seed, item_id, "latency").uniform(-jitter_ms, jitter_ms)
    return max(0.0, latency_ms + offset) / 1000


# ------------------------------------------------------------------------------------------------
# The server (runs in its own process)
# ------------------------------------------------------------------------------------------------

MAX_IDS = 20_000  # item ids requested since the last reset, kept for whoever checks who asked for what


@dataclasses.dataclass
class _Config:
    latency_ms: float = 50.0
    jitter_ms: float = 0.0
    failure_rate: float = 0.0
    seed: int = 0
    salt: str = ""  # never reported back

    def shown(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "salt"}


class _State:
    def __init__(self, config: _Config):
        self.config = config
        self.reset()

    def reset(self) -> None:
        self.started = time.perf_counter()
        self.requests = 0
        self.failures = 0
        # Requests still being served at reset keep counting down when they finish; zeroing
        # in_flight here would let it go negative and undercount the next window's maximum.
        self.in_flight = getattr(self, "in_flight", 0)
        self.max_in_flight = self.in_flight
        self.intervals: list[tuple[float, float]] = []
        self.ids: list[int] = []

    def stats(self, intervals: bool = False, ids: bool = False) -> dict:
        data = {"requests": self.requests, "failures": self.failures, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "config": self.config.shown()}
        if intervals:
            data["intervals"] = self.intervals
        if ids:
            data["ids"] = self.ids
        return data

    def configure(self, changes: dict) -> None:
        for key in changes:
            if not hasattr(self.config, key):
                raise ValueError(f"unknown setting {key!r}")
        for key, value in changes.items():
            setattr(self.config, key, type(getattr(self.config, key))(value))

    def command(self, message: dict) -> dict:
        """One control command (from the pipe): stats, reset or configure."""
        op = message.get("op")
        if op == "stats":
            return self.stats(intervals=bool(message.get("intervals")), ids=bool(message.get("ids")))
        if op == "reset":
            self.reset()
            return self.stats()
        if op == "configure":
            self.configure(message.get("settings", {}))
            return self.stats()
        raise ValueError(f"unknown command {op!r}")


def _make_app(state: _State, *, http_control: bool = True):
    from aiohttp import web

    async def item(request: web.Request) -> web.Response:
        item_id = int(request.match_info["item_id"])
        config = state.config
        state.requests += 1
        if len(state.ids) < MAX_IDS:
            state.ids.append(item_id)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        began = time.perf_counter() - state.started
        try:
            await asyncio.sleep(item_latency_s(item_id, config.latency_ms, config.jitter_ms, config.seed))
            if item_fails(item_id, config.failure_rate, config.seed):
                state.failures += 1
                return web.json_response({"error": f"item {item_id} failed (injected)"}, status=500)
            return web.json_response(item_value(item_id, config.salt))
        finally:
            state.in_flight -= 1
            if len(state.intervals) < MAX_INTERVALS:
                state.intervals.append((began, time.perf_counter() - state.started))

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state.stats(intervals=request.query.get("intervals") == "1"))

    app = web.Application()
    app.router.add_get("/items/{item_id:-?\\d+}", item)
    if http_control:
        app.router.add_get("/stats", stats)  # read-only; a grader's service has no route but /items
    return app


def _control_from_stdin(state: _State, loop: asyncio.AbstractEventLoop, stopped: asyncio.Event) -> None:
    """Read JSON commands from stdin (a pipe only the starter holds), run each on the loop, answer on stdout."""
    def run(message: dict) -> dict:
        try:
            return {"ok": True, "value": state.command(message)}
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    async def on_loop(message: dict) -> dict:
        return run(message)

    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            reply = {"ok": False, "error": "not a JSON command"}
        else:
            reply = asyncio.run_coroutine_threadsafe(on_loop(message), loop).result()
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    loop.call_soon_threadsafe(stopped.set)  # the starter closed the pipe (or died): stop serving


async def _serve(config: _Config, port: int, *, http_control: bool = True, control_stdin: bool = False) -> None:
    from aiohttp import web

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    state = _State(config)
    runner = web.AppRunner(_make_app(state, http_control=http_control), access_log=None)
    await runner.setup()
    # A deep backlog: an unbounded client may open hundreds of connections at once.
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    print(f"listening {sock.getsockname()[1]}", flush=True)
    stopped = asyncio.Event()
    if control_stdin:
        threading.Thread(target=_control_from_stdin, args=(state, asyncio.get_running_loop(), stopped),
                         daemon=True).start()
    await stopped.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perflab.topics.t06_async.slowservice", description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--control-stdin", action="store_true",
                        help="read control commands (JSON lines) on stdin, answer on stdout; exit when stdin closes")
    parser.add_argument("--no-http-control", action="store_true", help="serve /items only (no /stats)")
    args = parser.parse_args(argv)
    config = _Config(args.latency_ms, args.jitter_ms, args.failure_rate, args.seed)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, args.port, http_control=not args.no_http_control,
                           control_stdin=args.control_stdin))


# ------------------------------------------------------------------------------------------------
# The client-side handle
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SlowService:
    """A running service: its URL, its counters (read over its control pipe), and what it should answer."""

    port: int
    process: subprocess.Popen
    salt: str = dataclasses.field(default="", repr=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def item_url(self, item_id: int) -> str:
        return f"{self.url}/items/{item_id}"

    def _command(self, message: dict) -> dict:
        """One command over the control pipe (stdin/stdout of the service: only its starter holds them)."""
        with self._lock:
            try:
                self.process.stdin.write(json.dumps(message) + "\n")
                self.process.stdin.flush()
                line = self.process.stdout.readline()
            except (OSError, ValueError) as exc:
                raise ServiceError(f"the slow service on port {self.port} did not answer {message['op']}: {exc}") from exc
        if not line:
            raise ServiceError(f"the slow service on port {self.port} is gone (exit code {self.process.poll()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ServiceError(f"the slow service refused {message['op']}: {reply.get('error')}")
        return reply["value"]

    def alive(self) -> bool:
        """Still running, and answering its starter on the control pipe."""
        if self.process.poll() is not None:
            return False
        try:
            self._command({"op": "stats"})
        except (ServiceError, ValueError):
            return False
        return True

    def stats(self, intervals: bool = False, ids: bool = False) -> dict:
        """Counters since the last reset: requests, failures, in_flight, max_in_flight, config (and, when
        asked, each request's (start, end) and the item ids requested)."""
        return self._command({"op": "stats", "intervals": intervals, "ids": ids})

    @property
    def max_in_flight(self) -> int:
        return self.stats()["max_in_flight"]

    @property
    def config(self) -> dict:
        return self.stats()["config"]

    def reset(self) -> dict:
        return self._command({"op": "reset"})

    def configure(self, **settings) -> dict:
        """Change latency_ms, jitter_ms, failure_rate, seed or salt for the next requests."""
        value = self._command({"op": "configure", "settings": settings})
        if "salt" in settings:
            self.salt = str(settings["salt"])
        return value

    def intervals(self) -> list[tuple[float, float]]:
        """(start, end) of each request since the last reset, in seconds."""
        return [tuple(pair) for pair in self.stats(intervals=True)["intervals"]]

    def expected(self, item_id: int) -> dict | None:
        """What /items/{item_id} returns now: its JSON body, or None if it is set to fail."""
        config = self.config
        return None if item_fails(item_id, config["failure_rate"], config["seed"]) else item_value(item_id, self.salt)

    def fails(self, item_id: int) -> bool:
        config = self.config
        return item_fails(item_id, config["failure_rate"], config["seed"])

    def ideal_seconds(self, n: int, limit: int | None = None) -> float:
        """N × latency / limit: the best any client can do with at most `limit` requests in flight."""
        import math

        latency = self.config["latency_ms"] / 1000
        return math.ceil(n / (limit or n)) * latency if self.config["jitter_ms"] == 0 else n * latency / (limit or n)

    def close(self) -> None:
        from perflab.stack import terminate

        with contextlib.suppress(OSError, ValueError):
            self.process.stdin.close()  # the service exits when its control pipe closes
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1.0)
        terminate(self.process)
        with contextlib.suppress(OSError, ValueError):
            self.process.stdout.close()


def start(latency_ms: float = 50.0, *, jitter_ms: float = 0.0, failure_rate: float = 0.0, seed: int = 0,
          port: int = 0, http_control: bool = True, salt: str = "") -> SlowService:
    """Start the service in its own process; stop it with ``.close()`` (or use :func:`running`).

    ``http_control=False`` (a grader's service): no HTTP route but ``/items/{id}``. ``salt`` is sent over
    the control pipe (never on the command line, which other users can read)."""
    if not 0 <= failure_rate <= 1:
        raise ValueError(f"failure_rate is a share between 0 and 1, not {failure_rate!r}")
    errors = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: nobody has to drain it
    argv = [sys.executable, "-m", "perflab.topics.t06_async.slowservice", "--latency-ms", str(latency_ms),
            "--jitter-ms", str(jitter_ms), "--failure-rate", str(failure_rate), "--seed", str(seed),
            "--port", str(port), "--control-stdin"]
    if not http_control:
        argv.append("--no-http-control")
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, text=True,
                               cwd=str(paths.ROOT))
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        process.kill()
        process.wait()
        errors.seek(0)
        raise ServiceError(f"the slow service did not start (it said {line!r}).\n{errors.read().strip()[-2000:]}")
    service = SlowService(port=int(line.split()[1]), process=process)
    if salt:
        service.configure(salt=salt)
    return service


@contextlib.contextmanager
def running(latency_ms: float = 50.0, **settings) -> Iterator[SlowService]:
    """``with slowservice.running(latency_ms=50) as svc:`` — started, yielded, stopped."""
    service = start(latency_ms, **settings)
    try:
        yield service
    finally:
        service.close()


if __name__ == "__main__":
    main()
