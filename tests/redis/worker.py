"""One process of a test fleet: N concurrent identical requests through a Redis backend.

Run as ``python -m tests.redis.worker '<json config>'`` from the repository root. It
prints JSON lines: ``{"event": "joined"}`` once all its callers share one local flight,
``{"event": "first"}`` (streaming only) once every caller has its first chunk, then
``{"event": "done", ...}`` with every caller's result and the transport's counters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import anyio

from httpx_coalesce import CoalescingTransport
from httpx_coalesce.redis import RedisBackend


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def make_transport(config: dict[str, Any]) -> CoalescingTransport:
    options: dict[str, Any] = {"prefix": config["prefix"], "client_name": config["client_name"]}
    for name in ("lease", "socket_timeout"):
        if name in config:
            options[name] = config[name]
    if config.get("cluster"):
        options["cluster"] = True
    return CoalescingTransport(
        backend=RedisBackend.from_url(config["redis"], **options), window=config.get("window", 0.0)
    )


def stats_of(transport: CoalescingTransport) -> dict[str, Any]:
    stats = transport.stats()
    fields = {field.name: getattr(stats, field.name) for field in dataclasses.fields(stats)}
    return {name: _plain(value) for name, value in fields.items()}


def _plain(value: Any) -> Any:
    """What JSON takes: the mappings (bypassed, tokens_saved_by_type...) are read-only views,
    and a Decimal (cost_saved) goes as its exact text."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, Decimal):
        return str(value)
    return value


class Progress:
    """Callers' progress, reported once for all of them."""

    def __init__(self, callers: int) -> None:
        self._callers = callers
        self._lock = threading.Lock()
        self._firsts = 0

    def first_chunk(self) -> None:
        with self._lock:
            self._firsts += 1
            if self._firsts == self._callers:
                emit("first")


def result(status: int, body: bytes) -> dict[str, Any]:
    return {"status": status, "body": body.decode("utf-8", "replace"), "error": None}


def failure(error: BaseException) -> dict[str, Any]:
    return {"status": None, "body": None, "error": f"{type(error).__name__}: {error}"}


def watch_join(transport: CoalescingTransport, callers: int, done: Callable[[], bool]) -> None:
    while not done():
        if transport.stats().waiters >= callers:
            emit("joined")
            return
        time.sleep(0.002)


async def run_async(config: dict[str, Any], library: Any) -> None:
    transport = make_transport(config)
    callers: int = config["callers"]
    progress = Progress(callers)
    results: list[dict[str, Any]] = []
    finished = threading.Event()

    async with library.AsyncClient(transport=transport, timeout=30.0) as client:

        async def call() -> None:
            try:
                request = client.build_request(
                    config["method"], config["url"], json=config.get("json"), headers=config.get("headers")
                )
                response = await client.send(request, stream=True)
                try:
                    body = b""
                    async for chunk in response.aiter_raw():
                        if not body:
                            progress.first_chunk()
                        body += chunk
                finally:
                    await response.aclose()
                results.append(result(response.status_code, body))
            except Exception as error:
                results.append(failure(error))

        watcher = threading.Thread(target=watch_join, args=(transport, callers, finished.is_set), daemon=True)
        watcher.start()
        async with anyio.create_task_group() as group:
            for _ in range(callers):
                group.start_soon(call)
        finished.set()
    emit("done", results=results, stats=stats_of(transport))


def run_sync(config: dict[str, Any], library: Any) -> None:
    transport = make_transport(config)
    callers: int = config["callers"]
    progress = Progress(callers)
    results: list[dict[str, Any]] = []
    finished = threading.Event()

    with library.Client(transport=transport, timeout=30.0) as client:

        def call() -> None:
            try:
                request = client.build_request(
                    config["method"], config["url"], json=config.get("json"), headers=config.get("headers")
                )
                response = client.send(request, stream=True)
                try:
                    body = b""
                    for chunk in response.iter_raw():
                        if not body:
                            progress.first_chunk()
                        body += chunk
                finally:
                    response.close()
                results.append(result(response.status_code, body))
            except Exception as error:
                results.append(failure(error))

        watcher = threading.Thread(target=watch_join, args=(transport, callers, finished.is_set), daemon=True)
        watcher.start()
        threads = [threading.Thread(target=call) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        finished.set()
    emit("done", results=results, stats=stats_of(transport))


def main() -> None:
    config: dict[str, Any] = json.loads(sys.argv[1])
    if os.environ.get("FLEET_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, format="%(relativeCreated)d %(threadName)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)
        logging.getLogger("httpcore").setLevel(logging.WARNING)
    library = __import__(config.get("library", "httpx"))
    mode = config.get("mode", "asyncio")
    if mode == "sync":
        run_sync(config, library)
    else:
        anyio.run(run_async, config, library, backend=mode)


if __name__ == "__main__":
    main()
