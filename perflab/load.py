"""An open-loop load generator: requests leave on a fixed schedule, whatever the server does.

    result = load.open_loop(lambda i: ("POST", f"{url}/orders/job-{i}"), rate=20, duration=3)
    result.p50_ms, result.p99_ms, result.requests    # latency measured from the *intended* send time

A closed-loop generator (N clients, each waiting for its answer before sending the next) sends less
when the server stalls, so the stall hides itself: coordinated omission. Here request ``i`` is due at
``start + i / rate``; it is sent then (even if a thousand are still waiting), and its latency is
counted from that due time, so time spent queued anywhere — in the client, the kernel, the server —
is in the number.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from perflab import progress
from perflab.results import ResultMixin
from perflab.units import format_seconds


@dataclass
class LoadResult(ResultMixin):
    kind = "load"

    rate: float
    duration: float
    requests: pd.DataFrame  # one row per request: i, due_s, sent_s, done_s, latency_ms, status

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.requests.latency_ms, q))

    @property
    def p50_ms(self) -> float:
        return self.percentile_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.percentile_ms(99)

    @property
    def late_sends_ms(self) -> float:
        """The worst lag between a request's due time and its actual send (the generator's own health)."""
        return float((self.requests.sent_s - self.requests.due_s).max() * 1000)

    @property
    def headline(self) -> str:
        """"open loop, 20 req/s for 3 s: p50 51.2 ms, p99 80.1 ms (60 requests, all 200)"."""
        statuses = self.requests.status.astype(str).value_counts()
        ok = "all " + statuses.index[0] if len(statuses) == 1 else ", ".join(f"{n} {s}" for s, n in statuses.items())
        return (f"open loop, {self.rate:g} req/s for {self.duration:g} s: p50 {format_seconds(self.p50_ms / 1e3)}, "
                f"p99 {format_seconds(self.p99_ms / 1e3)} ({len(self.requests):,} requests, {ok})")

    def tidy(self):
        """The result protocol's table: one row (requests, p50, p99, max in ms)."""
        summary = self.summary()
        return pd.DataFrame([{k: v for k, v in summary.items() if k != "statuses"}])

    def _details(self) -> dict:
        return {"statuses": self.summary()["statuses"], "duration_s": self.duration}

    def summary(self) -> dict:
        statuses = self.requests.status.value_counts().to_dict()
        return {"rate_per_s": self.rate, "requests": len(self.requests), "p50_ms": round(self.p50_ms, 1),
                "p99_ms": round(self.p99_ms, 1), "max_ms": round(self.requests.latency_ms.max(), 1),
                "statuses": {str(k): int(v) for k, v in statuses.items()}}


async def _run(request_for: Callable[[int], tuple[str, str]], rate: float, duration: float,
               timeout: float, tracker: progress.Tracker | None = None) -> pd.DataFrame:
    import aiohttp

    loop = asyncio.get_running_loop()
    count = int(round(rate * duration))
    if tracker is not None:
        tracker.update(0, total=count)
    rows = []
    connector = aiohttp.TCPConnector(limit=0)  # no client-side cap: a cap would be a closed loop
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        start = loop.time() + 0.05

        async def one(i: int) -> None:
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            sent = loop.time()
            method, url = request_for(i)
            try:
                async with session.request(method, url) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status = type(exc).__name__
            done = loop.time()
            rows.append({"i": i, "due_s": due - start, "sent_s": sent - start, "done_s": done - start,
                         "latency_ms": (done - due) * 1000, "status": status})
            if tracker is not None:
                tracker.advance()   # from the loop's thread: drawn by the waiting thread
        await asyncio.gather(*(one(i) for i in range(count)))
    return pd.DataFrame(rows).sort_values("i").reset_index(drop=True)


def open_loop(request_for: Callable[[int], tuple[str, str]], *, rate: float, duration: float,
              timeout: float = 60.0) -> LoadResult:
    """Send ``rate`` requests per second for ``duration`` seconds; ``request_for(i)`` gives (method, url)."""
    from perflab.harness import run_async

    started = time.perf_counter()
    count = int(round(rate * duration))
    with progress.track(count, unit="requests", what=f"{rate:g} requests/s") as tracker:
        frame = run_async(_run(request_for, rate, duration, timeout, tracker))
    frame.attrs["wall_s"] = time.perf_counter() - started
    return LoadResult(rate=rate, duration=duration, requests=frame)
