"""Real clients through the real gateway: curl, the Python OpenAI SDK, the Node.js OpenAI SDK.

Each burst is held at the fake API until every client has joined the gateway's flight
(its ``waiters_active`` gauge says so), then released: one upstream call, whatever the
timing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import pytest

from httpx_coalesce._demo.fake_api import FakeLLMAPI

from .conftest import GatewayProcess, wait_for

openai = pytest.importorskip("openai")

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}
NODE_DIR = Path(__file__).parent / "node"


def _held(api: FakeLLMAPI) -> threading.Event:
    hold = threading.Event()
    api.hold = hold
    return hold


def test_concurrent_identical_curl_posts_make_one_upstream_call(
    gateway: GatewayProcess, fake_api: FakeLLMAPI
) -> None:
    hold = _held(fake_api)
    command = [
        "curl",
        "-sS",
        "--fail-with-body",
        gateway.url + "/fake/v1/chat/completions",
        "-H",
        "content-type: application/json",
        "-H",
        "authorization: Bearer sk-curl",
        "-d",
        json.dumps(CHAT),
    ]
    with ThreadPoolExecutor(8) as pool:
        runs = [pool.submit(subprocess.run, command, capture_output=True, check=True) for _ in range(8)]
        wait_for(lambda: gateway.waiters() == 8)
        hold.set()
        bodies = [json.loads(run.result().stdout) for run in runs]
    assert fake_api.hits == 1
    assert len({body["id"] for body in bodies}) == 1
    assert len({body["choices"][0]["message"]["content"] for body in bodies}) == 1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_python_openai_sdk_burst_through_base_url_makes_one_upstream_call(
    gateway: GatewayProcess, fake_api: FakeLLMAPI
) -> None:
    hold = _held(fake_api)
    client = openai.AsyncOpenAI(base_url=gateway.url + "/fake/v1", api_key="sk-python", max_retries=0)
    ids: list[str] = []

    async def ask() -> None:
        completion = await client.chat.completions.create(**CHAT)
        ids.append(completion.id)

    async with client, anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(ask)
        await anyio.to_thread.run_sync(wait_for, lambda: gateway.waiters() == 20)
        hold.set()
    assert fake_api.hits == 1
    assert len(ids) == 20
    assert len(set(ids)) == 1


@pytest.mark.anyio
async def test_python_openai_sdk_streams_share_one_upstream_call(
    gateway: GatewayProcess, fake_api: FakeLLMAPI
) -> None:
    gate = threading.Event()
    fake_api.gate = gate
    client = openai.AsyncOpenAI(base_url=gateway.url + "/fake/v1", api_key="sk-python", max_retries=0)
    first = anyio.Semaphore(0)
    texts: list[str] = []

    async def stream() -> None:
        events = await client.chat.completions.create(**CHAT, stream=True)
        text, seen = "", 0
        async for chunk in events:
            if seen == 0:
                first.release()
            seen += 1
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
        texts.append(text)

    async with client, anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(stream)
        # Every client has its first event while the upstream still holds the rest:
        # the gateway passes events on as they come.
        for _ in range(10):
            with anyio.fail_after(15):
                await first.acquire()
        gate.set()
    assert fake_api.hits == 1
    assert len(texts) == 10
    assert len(set(texts)) == 1
    assert texts[0]


def _node(*args: str) -> subprocess.Popen[str]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.skip("the Node.js OpenAI SDK is not installed: npm ci --prefix tests/gateway/node")
    return subprocess.Popen(
        ["node", str(NODE_DIR / "burst.mjs"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _node_results(process: subprocess.Popen[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Lines before the result, and the result; fails with node's stderr if it failed."""
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    lines = out.splitlines()
    result = next(line for line in lines if line.startswith("RESULT "))
    return lines, json.loads(result.removeprefix("RESULT "))


def test_node_openai_sdk_burst_of_20_completions_makes_one_upstream_call(
    gateway: GatewayProcess, fake_api: FakeLLMAPI
) -> None:
    hold = _held(fake_api)
    process = _node("chat", gateway.url + "/fake/v1", "20")
    try:
        wait_for(lambda: gateway.waiters() == 20 or process.poll() is not None)
    finally:
        hold.set()
    _, results = _node_results(process)
    assert fake_api.hits == 1
    assert len(results) == 20
    assert len({result["id"] for result in results}) == 1
    assert len({result["text"] for result in results}) == 1


def test_node_openai_sdk_10_streams_make_one_upstream_call_and_get_every_event_live(
    gateway: GatewayProcess, fake_api: FakeLLMAPI
) -> None:
    gate = threading.Event()
    fake_api.gate = gate
    process = _node("stream", gateway.url + "/fake/v1", "10")
    assert process.stdout is not None
    firsts = 0
    try:
        # Each client prints "first i" on its first chunk; all ten print it while the
        # upstream holds every later event behind the gate.
        while firsts < 10:
            line = process.stdout.readline()
            if not line:
                break
            firsts += line.startswith("first ")
        assert firsts == 10
    finally:
        gate.set()
    _, results = _node_results(process)
    assert fake_api.hits == 1
    assert len(results) == 10
    assert len({(result["id"], result["text"], result["chunks"]) for result in results}) == 1
    assert results[0]["chunks"] > 2
