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

``GET /stats`` returns the counters (requests, failures, in flight, max in flight) and, with
``?intervals=1``, each request's start and end (seconds since the last reset) for a timeline plot.

Why a separate process: the client under test runs its own event loop; a server sharing its process
would share its GIL and its loop's scheduling, and its latency would depend on the client's load.
Run it directly: ``python -m perflab.topics.t06_async.slowservice --latency-ms 50``; it prints ``listening <port>``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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


def item_value(item_id: int) -> dict:
    """The body of a successful ``GET /items/{item_id}``."""
    return {"id": item_id, "value": (item_id * 7919) % 10_007}


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

@dataclasses.dataclass
class _Config:
    latency_ms: float = 50.0
    jitter_ms: float = 0.0
    failure_rate: float = 0.0
    seed: int = 0


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

    def stats(self, intervals: bool = False) -> dict:
        data = {"requests": self.requests, "failures": self.failures, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "config": dataclasses.asdict(self.config)}
        if intervals:
            data["intervals"] = self.intervals
        return data


def _make_app(state: _State):
    from aiohttp import web

    async def item(request: web.Request) -> web.Response:
        item_id = int(request.match_info["item_id"])
        config = state.config
        state.requests += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        began = time.perf_counter() - state.started
        try:
            await asyncio.sleep(item_latency_s(item_id, config.latency_ms, config.jitter_ms, config.seed))
            if item_fails(item_id, config.failure_rate, config.seed):
                state.failures += 1
                return web.json_response({"error": f"item {item_id} failed (injected)"}, status=500)
            return web.json_response(item_value(item_id))
        finally:
            state.in_flight -= 1
            if len(state.intervals) < MAX_INTERVALS:
                state.intervals.append((began, time.perf_counter() - state.started))

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state.stats(intervals=request.query.get("intervals") == "1"))

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return web.json_response(state.stats())

    async def configure(request: web.Request) -> web.Response:
        changes = await request.json()
        for key, value in changes.items():
            if not hasattr(state.config, key):
                return web.json_response({"error": f"unknown setting {key!r}"}, status=400)
            setattr(state.config, key, type(getattr(state.config, key))(value))
        return web.json_response(state.stats())

    app = web.Application()
    app.router.add_get("/items/{item_id:-?\\d+}", item)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_post("/config", configure)
    return app


async def _serve(config: _Config, port: int) -> None:
    from aiohttp import web

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    runner = web.AppRunner(_make_app(_State(config)), access_log=None)
    await runner.setup()
    # A deep backlog: an unbounded client may open hundreds of connections at once.
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    print(f"listening {sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perflab.topics.t06_async.slowservice", description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    config = _Config(args.latency_ms, args.jitter_ms, args.failure_rate, args.seed)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, args.port))


# ------------------------------------------------------------------------------------------------
# The client-side handle
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SlowService:
    """A running service: its URL, its counters, and what it should answer."""

    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def item_url(self, item_id: int) -> str:
        return f"{self.url}/items/{item_id}"

    def _call(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except OSError as exc:
            raise ServiceError(f"the slow service on port {self.port} did not answer {path}: {exc}") from exc

    def stats(self, intervals: bool = False) -> dict:
        """Counters since the last reset: requests, failures, in_flight, max_in_flight, config."""
        return self._call("/stats?intervals=1" if intervals else "/stats")

    @property
    def max_in_flight(self) -> int:
        return self.stats()["max_in_flight"]

    @property
    def config(self) -> dict:
        return self.stats()["config"]

    def reset(self) -> dict:
        return self._call("/reset", {})

    def configure(self, **settings) -> dict:
        """Change latency_ms, jitter_ms, failure_rate or seed for the next requests."""
        return self._call("/config", settings)

    def intervals(self) -> list[tuple[float, float]]:
        """(start, end) of each request since the last reset, in seconds."""
        return [tuple(pair) for pair in self.stats(intervals=True)["intervals"]]

    def expected(self, item_id: int) -> dict | None:
        """What /items/{item_id} returns now: its JSON body, or None if it is set to fail."""
        config = self.config
        return None if item_fails(item_id, config["failure_rate"], config["seed"]) else item_value(item_id)

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

        terminate(self.process)


def start(latency_ms: float = 50.0, *, jitter_ms: float = 0.0, failure_rate: float = 0.0, seed: int = 0,
          port: int = 0) -> SlowService:
    """Start the service in its own process; stop it with ``.close()`` (or use :func:`running`)."""
    if not 0 <= failure_rate <= 1:
        raise ValueError(f"failure_rate is a share between 0 and 1, not {failure_rate!r}")
    errors = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: nobody has to drain it
    process = subprocess.Popen(
        [sys.executable, "-m", "perflab.topics.t06_async.slowservice", "--latency-ms", str(latency_ms), "--jitter-ms",
         str(jitter_ms), "--failure-rate", str(failure_rate), "--seed", str(seed), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=errors, text=True, cwd=str(paths.ROOT),
    )
    line = process.stdout.readline().strip()
    if not line.startswith("listening "):
        process.kill()
        process.wait()
        errors.seek(0)
        raise ServiceError(f"the slow service did not start (it said {line!r}).\n{errors.read().strip()[-2000:]}")
    return SlowService(port=int(line.split()[1]), process=process)


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
