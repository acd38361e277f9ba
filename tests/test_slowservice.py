"""The slow service: its latency, its injected failures (deterministic), and its in-flight count."""
import asyncio
import time

import aiohttp
import pytest

from perflab.topics.t06_async import slowservice


async def _fetch_many(url, ids, limit=None):
    slots = asyncio.Semaphore(limit or len(ids))

    async def one(session, item_id):
        async with slots:
            async with session.get(f"{url}/items/{item_id}") as response:
                return response.status, await response.json()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        return await asyncio.gather(*(one(session, i) for i in ids))


def test_latency_answers_and_max_in_flight():
    with slowservice.running(latency_ms=30) as svc:
        started = time.perf_counter()
        answers = asyncio.run(_fetch_many(svc.url, list(range(20)), limit=5))
        seconds = time.perf_counter() - started
        stats = svc.stats()
    assert [body for _, body in answers] == [slowservice.item_value(i) for i in range(20)]
    assert stats["requests"] == 20 and stats["max_in_flight"] == 5 and stats["in_flight"] == 0
    assert seconds >= 4 * 0.030  # 20 requests, 5 at a time, 30 ms each: at least 4 waves


def test_failures_are_deterministic_and_reset_clears_counters():
    with slowservice.running(latency_ms=1, failure_rate=0.3, seed=7) as svc:
        answers = asyncio.run(_fetch_many(svc.url, list(range(50))))
        failing = [i for i in range(50) if svc.fails(i)]
        assert [i for i, (status, _) in enumerate(answers) if status == 500] == failing
        assert 5 < len(failing) < 25
        assert svc.stats()["failures"] == len(failing)
        assert svc.expected(failing[0]) is None
        svc.reset()
        assert svc.stats()["requests"] == 0 and svc.max_in_flight == 0


def test_configure_changes_the_latency():
    with slowservice.running(latency_ms=200) as svc:
        svc.configure(latency_ms=5, jitter_ms=0)
        started = time.perf_counter()
        asyncio.run(_fetch_many(svc.url, [1]))
        assert time.perf_counter() - started < 0.15
        assert svc.config["latency_ms"] == 5
        assert svc.ideal_seconds(100, 10) == pytest.approx(0.05)


def test_stops_with_the_context():
    with slowservice.running(latency_ms=1) as svc:
        process = svc.process
    assert process.poll() is not None
