"""A TCP relay that adds a fixed one-way delay in each direction: a network in a box.

On a laptop, the database is 30 µs away; in production it is 0.5–5 ms away, and every round trip pays
that. Lessons about N+1 queries and connection set-up only tell the truth once a round trip costs
what it costs in production, so the stack puts this relay in front of PostgreSQL (or Redis) when a
lesson asks for ``stack.latency_proxy(rtt_ms=...)``.

Why threads and not asyncio: asyncio's timers ride on epoll, whose timeout has millisecond
granularity, so a 0.5 ms delay would become 1 ms. ``time.sleep`` uses ``clock_nanosleep`` and
wakes within tens of microseconds. Why a separate process: the measured program's Python code
holds the GIL; a relay sharing it would add jitter that belongs to neither side.

Each chunk read from one side is stamped with ``due = now + delay`` and written to the other side at
``due``; chunks queue up rather than wait for each other, so the relay models latency, not a
bandwidth cap (pipelined traffic is not slowed more than once).

Run it directly: ``python -m perflab.proxy --target 127.0.0.1:5432 --rtt-ms 2``; it prints
``listening <port>`` once ready and runs until terminated.
"""
from __future__ import annotations

import argparse
import collections
import socket
import sys
import threading
import time

CHUNK_BYTES = 65536
# time.sleep overshoots by ~50-100 µs on Linux; sleep until this close to the due time, then spin.
# The spin costs at most this much CPU per message and keeps a 0.5 ms delay within a few percent.
SPIN_S = 0.00015


def _pump(source: socket.socket, sink: socket.socket, delay_s: float) -> None:
    """Copy bytes from source to sink, each chunk delivered ``delay_s`` after it was read."""
    pending: collections.deque[tuple[float, bytes]] = collections.deque()
    ready = threading.Condition()
    reader_done = False

    def read_side() -> None:
        nonlocal reader_done
        try:
            while True:
                chunk = source.recv(CHUNK_BYTES)
                if not chunk:
                    break
                with ready:
                    pending.append((time.perf_counter() + delay_s, chunk))
                    ready.notify()
        except OSError:
            pass
        finally:
            with ready:
                reader_done = True
                ready.notify()

    reader = threading.Thread(target=read_side, daemon=True)
    reader.start()
    try:
        while True:
            with ready:
                while not pending and not reader_done:
                    ready.wait()
                if not pending:
                    break
                due, chunk = pending.popleft()
            wait = due - time.perf_counter()
            if wait > SPIN_S:
                time.sleep(wait - SPIN_S)
            while time.perf_counter() < due:
                pass
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        # Half-close: the peer sees EOF in this direction only, as it would over a real network.
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _relay(client: socket.socket, target: tuple[str, int], delay_s: float) -> None:
    try:
        upstream = socket.create_connection(target)
    except OSError:
        client.close()
        return
    for sock in (client, upstream):
        # Small messages (one query, one reply) must not wait for Nagle's algorithm.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    forward = threading.Thread(target=_pump, args=(client, upstream, delay_s), daemon=True)
    backward = threading.Thread(target=_pump, args=(upstream, client, delay_s), daemon=True)
    forward.start()
    backward.start()
    forward.join()
    backward.join()
    client.close()
    upstream.close()


def serve(target: tuple[str, int], rtt_ms: float, port: int = 0, ready_file=sys.stdout) -> None:
    """Listen on 127.0.0.1:port (0 picks a free one) and relay every connection to ``target``."""
    delay_s = rtt_ms / 2000.0  # half the round trip each way
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(256)
    print(f"listening {listener.getsockname()[1]}", file=ready_file, flush=True)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_relay, args=(client, target, delay_s), daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m perflab.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port to relay to")
    parser.add_argument("--rtt-ms", type=float, required=True, help="added round-trip time in ms")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    try:
        serve((host, int(port)), args.rtt_ms, args.port)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
