"""A program of its own (``sys.modules`` changes for the whole process), run by
``test_under_sdks.py``: it plays differential scenarios bare and wrapped, and prints
``all invisible`` if none told them apart.

    python alias_program.py alias-first|coalesce-first - URL
        httpx2.alias_httpx() called before or after httpx_coalesce is imported; every
        scenario under "httpx", which is httpx2, on every runtime; and a default inner
        transport.
    python alias_program.py replaced STAND_IN URL
        httpx_coalesce imported before httpx, then sys.modules["httpx"] replaced by
        STAND_IN (an-empty-module, httpx2, none) before the first request.

URL is the differential server of the calling test (its gates are not used here).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

MODE, STAND_IN, URL = sys.argv[1:4]
sys.path.insert(0, str(Path(__file__).parents[2]))

if MODE == "alias-first":
    import httpx2

    httpx2.alias_httpx()
    import httpx_coalesce
else:
    import httpx_coalesce  # noqa: F401

    if MODE == "coalesce-first":
        import httpx2

        # Refused if httpx_coalesce had imported httpx.
        httpx2.alias_httpx()

import anyio  # noqa: E402
import httpx  # noqa: E402

from httpx_coalesce import CoalescingTransport  # noqa: E402
from tests.differential.scenarios import (  # noqa: E402
    LARGE,
    LIBRARIES,
    RUNTIMES,
    Route,
    Scenario,
    assert_invisible,
    assert_shared,
)
from tests.differential.server import DifferentialServer  # noqa: E402

if MODE == "replaced":
    stand_ins = {"an-empty-module": types.ModuleType("httpx"), "httpx2": LIBRARIES["httpx2"], "none": None}
    sys.modules["httpx"] = stand_ins[STAND_IN]  # type: ignore[assignment]
    libraries = ["httpx", "httpx2"]
else:
    assert httpx is LIBRARIES["httpx2"], "the alias is not on"
    libraries = ["httpx"]


def default_inner_transport(lib: str, runtime: str, url: str) -> None:
    """CoalescingTransport() with no inner transport: the request's library's default."""
    module = LIBRARIES[lib]
    if runtime == "sync":
        with module.Client(transport=CoalescingTransport()) as client:
            assert client.post(f"{url}/echo", json={"q": 1}).status_code == 200
        return

    async def main() -> None:
        async with module.AsyncClient(transport=CoalescingTransport()) as client:
            assert (await client.post(f"{url}/echo", json={"q": 1})).status_code == 200

    anyio.run(main, backend=runtime)


def main() -> None:
    upload = Path(__file__)
    with DifferentialServer() as server:
        for lib in libraries:
            for runtime in RUNTIMES:
                assert_invisible(Scenario(lib, runtime, route=Route(cookie=True)), server, upload)
                assert_invisible(Scenario(lib, runtime, body="generator"), server, upload)
                assert_invisible(
                    Scenario(lib, runtime, route=Route(size=LARGE, mode="sse", hold_body=True), stream=True),
                    server,
                    upload,
                )
                assert_invisible(
                    Scenario(lib, runtime, route=Route(size=LARGE), fault="read_error", fault_at=4000),
                    server,
                    upload,
                )
                assert_invisible(Scenario(lib, runtime, refused=True), server, upload)
                assert_shared(Scenario(lib, runtime, route=Route(slow=True)), server, upload)
                default_inner_transport(lib, runtime, URL)
    print("all invisible")


main()
