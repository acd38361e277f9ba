"""Topic 8's web application: one endpoint that does slow work in the request, or hands it to Celery.

    app = webapp.make_app("inline")                      # POST /orders/{id}: does the job, then answers 200
    app = webapp.make_app("offload", client=celery_app)  # POST /orders/{id}: enqueues it, answers 202 + task id
    with webapp.serve(app) as base_url:                  # a real aiohttp server on 127.0.0.1, in a thread
        ...                                              # GET /tasks/{task_id}: the job's state (poll it)

Both modes run their blocking calls on a small thread pool (``web_threads``), like a web server's
worker threads: the inline job holds one for its whole duration, the offloaded one only for the
enqueue (~1 ms).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from aiohttp import web

from perflab.topics.t08_offload import tasks


def make_app(mode: str, *, client=None, web_threads: int = 4, idempotent: bool = True) -> web.Application:
    if mode not in ("inline", "offload"):
        raise ValueError("mode is 'inline' or 'offload'")
    if mode == "offload" and client is None:
        raise ValueError("the offload mode needs the Celery client app (tasks.client(...))")
    executor = ThreadPoolExecutor(web_threads, thread_name_prefix=f"web-{mode}")

    async def create_order(request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        loop = asyncio.get_running_loop()
        if mode == "inline":
            result = await loop.run_in_executor(executor, tasks.run_order_job, job_id, idempotent)
            return web.json_response({"job_id": job_id, "status": "done", **result})
        sent = await loop.run_in_executor(
            executor, lambda: client.send_task("perflab.process_order", args=(job_id, idempotent)))
        return web.json_response({"job_id": job_id, "task_id": sent.id, "status_url": f"/tasks/{sent.id}"},
                                 status=202)

    async def task_status(request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        loop = asyncio.get_running_loop()
        result = client.AsyncResult(task_id)
        state = await loop.run_in_executor(executor, lambda: result.state)
        body = {"task_id": task_id, "state": state}
        if state == "SUCCESS":
            body["result"] = await loop.run_in_executor(executor, lambda: result.result)
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/orders/{job_id}", create_order)
    if client is not None:
        app.router.add_get("/tasks/{task_id}", task_status)
    app.on_cleanup.append(lambda _app: _shutdown(executor))
    return app


async def _shutdown(executor: ThreadPoolExecutor) -> None:
    executor.shutdown(wait=False, cancel_futures=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(app: web.Application) -> Iterator[str]:
    """Run ``app`` on 127.0.0.1 in a thread with its own event loop; yield its base URL."""
    port = _free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    started = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True, name="perflab-webapp")
    thread.start()
    started.wait(15)
    if failure:
        raise failure[0]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
