"""Lab 06's drivers: course code that runs INSIDE a grading sandbox (never in the grader's process).

`fetch_all` runs that side's ``answers.fetch_all(session, base_url, ids)`` once, in a fresh event loop,
with an ``aiohttp.ClientSession`` that does not limit connections (the bound must come from the answer),
against the slow service the grader started and owns. It returns the results, or that the call was
cancelled after ``timeout`` seconds. Nothing here is trusted for a pass: the grader times the call
itself, reads what the service saw (requests in flight, the ids asked for) over a pipe only it holds,
and the items carry a secret salt, so an answer is right only if it came from the service.
"""
from __future__ import annotations

import asyncio
import inspect


def ready(answers) -> bool:
    """Import what `fetch_all` needs, so that the first timed call does not pay for it."""
    import aiohttp  # noqa: F401

    return True


def fetch_all(answers, base_url: str, ids: list, timeout: float) -> dict:
    import aiohttp

    function = answers.fetch_all
    if not inspect.iscoroutinefunction(function):
        raise TypeError("fetch_all should be a coroutine function: `async def fetch_all(session, base_url, ids):`")

    async def drive() -> dict:
        # No connection limit on the session: the bound must come from the answer itself.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            try:
                results = await asyncio.wait_for(function(session, base_url, list(ids)), timeout)
            except asyncio.TimeoutError:
                return {"timed_out": True}
            return {"timed_out": False, "results": _shown(results)}

    return asyncio.run(drive())


def _shown(results):
    """Exceptions kept in the results (gather(return_exceptions=True) without a None) as readable text."""
    if isinstance(results, (list, tuple)):
        return [f"<{type(r).__name__}: {str(r)[:100]}>" if isinstance(r, BaseException) else r for r in results]
    return results
