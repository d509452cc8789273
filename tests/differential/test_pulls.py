"""Alone, an inner transport's body advances only as its caller reads (issue 19.5).

Wrapped, a lone caller must see the very same reads: nothing pulled before it reads,
one chunk more for each chunk it takes, nothing more once it closes the stream unread.
The inner transport here is a unit-level stand-in (no network), because its point is to
count the pulls of its body iterator exactly; the comparison is bare against wrapped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

import anyio
import pytest

from httpx_coalesce import CoalescingTransport, Limits

from .scenarios import LIBRARIES, RUNTIMES

#: Five chunks of 4 KiB: 20 KiB, past the bound under which a body of known length
#: may be read whole before its headers; and an empty one, which alone a caller reads
#: past within the same read.
CHUNKS = [bytes([65 + n]) * 4096 for n in range(5)]
CHUNKS.insert(2, b"")


class _Count:
    def __init__(self) -> None:
        self.pulled = 0


def _inner(lib: ModuleType, is_async: bool, count: _Count, length: bool) -> Any:
    headers = [("content-type", "application/octet-stream")]
    if length:
        headers.append(("content-length", str(sum(map(len, CHUNKS)))))

    class SyncBody(lib.SyncByteStream):  # type: ignore[misc,name-defined]
        def __iter__(self) -> Iterator[bytes]:
            for chunk in CHUNKS:
                count.pulled += 1
                yield chunk

    class AsyncBody(lib.AsyncByteStream):  # type: ignore[misc,name-defined]
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for chunk in CHUNKS:
                count.pulled += 1
                yield chunk

    class Inner(lib.BaseTransport, lib.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        def handle_request(self, request: Any) -> Any:
            return lib.Response(200, headers=headers, stream=SyncBody(), request=request)

        async def handle_async_request(self, request: Any) -> Any:
            return lib.Response(200, headers=headers, stream=AsyncBody(), request=request)

    return Inner()


def _pulls(
    lib: ModuleType, runtime: str, wrapped: bool, length: bool, read: int, limits: Limits | None = None
) -> list[int]:
    """Chunks pulled from the inner body: after the head, after each of *read* chunks
    the caller takes, and after it closes the stream."""
    count = _Count()
    inner = _inner(lib, runtime != "sync", count, length)
    transport = CoalescingTransport(inner, limits=limits or Limits()) if wrapped else inner
    seen: list[int] = []
    if runtime == "sync":
        with lib.Client(transport=transport) as client:
            request = client.build_request("POST", "http://pulls.test/", json={"n": 1})
            response = client.send(request, stream=True)
            seen.append(count.pulled)
            chunks = response.iter_raw()
            for _ in range(read):
                next(chunks, None)
                seen.append(count.pulled)
            response.close()
            seen.append(count.pulled)
        return seen

    async def play() -> None:
        async with lib.AsyncClient(transport=transport) as client:
            request = client.build_request("POST", "http://pulls.test/", json={"n": 1})
            response = await client.send(request, stream=True)
            seen.append(count.pulled)
            chunks = response.aiter_raw()
            for _ in range(read):
                await anext(chunks, None)
                seen.append(count.pulled)
            await response.aclose()
            await anyio.sleep(0.01)  # let a pump that would run ahead show it
            seen.append(count.pulled)

    anyio.run(play, backend=runtime)
    return seen


#: A memory bound the first chunk passes: from the second on, nobody can join the
#: flight, and its lone leader pulls the chunks itself rather than through the pump.
PAST_THE_BOUND = Limits(max_body_bytes=4096 + 1)


@pytest.mark.parametrize("bound", [None, PAST_THE_BOUND], ids=["within-bound", "past-bound"])
@pytest.mark.parametrize("length", [False, True], ids=["chunked", "known-length"])
@pytest.mark.parametrize("read", [0, 1, 3, 6])
@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("lib", list(LIBRARIES))
def test_a_lone_caller_pulls_the_inner_body_exactly_as_far_as_alone(
    lib: str, runtime: str, read: int, length: bool, bound: Limits | None
) -> None:
    module = LIBRARIES[lib]
    alone = _pulls(module, runtime, wrapped=False, length=length, read=read)
    coalesced = _pulls(module, runtime, wrapped=True, length=length, read=read, limits=bound)
    assert coalesced == alone
    assert alone[0] == 0  # nothing before the caller reads
