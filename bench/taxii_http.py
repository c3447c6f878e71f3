"""Which HTTP server for TAXII: aiohttp's (what the exchange uses) against uvicorn with
Starlette (the usual ASGI pair), each serving on an asyncio loop in this process as the
exchange would, the same two answers: a small JSON document (discovery) and a 1 MB body
(a page of 1,000 objects). The client runs in a process of its own: 4 threads, each
with one keep-alive connection. Prints requests/s, p50/p99 and the server's CPU per
request, with uvicorn's figures as ratios to aiohttp's. Never fails on a timing.

    .venv/bin/python bench/taxii_http.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import socket
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

SMALL = b'{"title":"Trafficking indicator exchange","api_roots":["http://127.0.0.1/exchange/"]}'
LARGE = (
    b'{"more":false,"objects":['
    + b",".join([b'{"id":"x","pad":"' + b"a" * 1000 + b'"}'] * 1000)
    + b"]}"
)
MEDIA = "application/taxii+json;version=2.1"
THREADS = 4


def _client(port: int, path: str, count: int, out: Any) -> None:
    times: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for _ in range(count // THREADS):
            began = time.perf_counter()
            conn.request("GET", path, headers={"Accept": MEDIA})
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - began)
        conn.close()
        with lock:
            times.extend(mine)

    began = time.perf_counter()
    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.send((time.perf_counter() - began, times))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _aiohttp(port: int) -> Callable[[], Awaitable[None]]:
    from aiohttp import web  # noqa: PLC0415

    async def small(_: web.Request) -> web.Response:
        return web.Response(body=SMALL, headers={"Content-Type": MEDIA})

    async def large(_: web.Request) -> web.Response:
        return web.Response(body=LARGE, headers={"Content-Type": MEDIA})

    app = web.Application()
    app.add_routes([web.get("/small", small), web.get("/large", large)])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner.cleanup


async def _uvicorn(port: int) -> Callable[[], Awaitable[None]]:
    import uvicorn  # noqa: PLC0415
    from starlette.applications import Starlette  # noqa: PLC0415
    from starlette.requests import Request  # noqa: PLC0415
    from starlette.responses import Response  # noqa: PLC0415
    from starlette.routing import Route  # noqa: PLC0415

    async def small(_: Request) -> Response:
        return Response(SMALL, media_type=MEDIA)

    async def large(_: Request) -> Response:
        return Response(LARGE, media_type=MEDIA)

    app = Starlette(routes=[Route("/small", small), Route("/large", large)])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False, log_level="error")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, no event)
        await asyncio.sleep(0.01)

    async def stop() -> None:
        server.should_exit = True
        await task

    return stop


def _measure(kind: str, path: str, count: int) -> tuple[float, float, float, float]:
    """(requests/s, p50 ms, p99 ms, server CPU ms per request)."""
    loop = asyncio.new_event_loop()
    port = _free_port()
    start = _aiohttp if kind == "aiohttp" else _uvicorn
    stop = loop.run_until_complete(start(port))
    mine, theirs = multiprocessing.Pipe()
    client = multiprocessing.get_context("spawn").Process(
        target=_client, args=(port, path, count, theirs)
    )
    cpu = time.process_time()
    client.start()
    while not mine.poll():
        loop.run_until_complete(asyncio.sleep(0.05))
    seconds, times = mine.recv()
    cpu = time.process_time() - cpu
    client.join()
    loop.run_until_complete(stop())
    loop.close()
    times.sort()
    done = len(times)
    return (
        done / seconds,
        statistics.median(times) * 1000,
        times[min(done - 1, int(done * 0.99))] * 1000,
        cpu / done * 1000,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8000, help="small requests (large: /20)")
    args = parser.parse_args()
    print(
        f"{'server':<20} {'answer':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11}"
    )
    for path, count in (("/small", args.requests), ("/large", max(args.requests // 20, THREADS))):
        base = None
        for kind in ("aiohttp", "uvicorn"):
            rate, p50, p99, cpu = _measure(kind, path, count)
            ratio = "" if base is None else f"  ({rate / base:.2f}x aiohttp's rate)"
            base = base or rate
            name = "aiohttp" if kind == "aiohttp" else "uvicorn+starlette"
            print(
                f"{name:<20} {path[1:]:<8} {rate:>9,.0f} {p50:>8.2f} {p99:>8.2f}"
                f" {cpu:>11.3f}{ratio}"
            )


if __name__ == "__main__":
    main()
