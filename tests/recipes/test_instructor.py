"""Recipe: Instructor (``instructor``, through the OpenAI SDK on httpx2).

Instructor pins ``jiter`` below what the current OpenAI SDK needs, so pip pairs it with an older ``openai``
3.x: this file runs in an environment of its own (see .ci/run), not beside the other recipes.
"""

from __future__ import annotations

import httpx2
import pytest

pytest.importorskip("instructor", reason="it runs in an environment of its own, see docs/recipes.md")

import instructor
from openai import AsyncOpenAI, OpenAI
from pydantic import BaseModel

from httpx_coalesce._demo.fake_api import FakeLLMAPI

from .support import PROMPT, MakeTransport, assert_one_upstream_call, overlap, overlap_threads

pytestmark = pytest.mark.recipes

MODEL = "gpt-4o-mini"
PATH = "/v1/chat/completions"


class Definition(BaseModel):
    term: str
    meaning: str
    examples: list[str]


def as_text(definition: Definition) -> str:
    # One string per answer, ending in a full stop, so the shared checks apply.
    return definition.model_dump_json() + "."


@pytest.mark.anyio
async def test_async_calls_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with AsyncOpenAI(
        base_url=url + "/v1", api_key="sk-test", http_client=httpx2.AsyncClient(transport=transport)
    ) as openai_client:
        client = instructor.from_openai(openai_client, mode=instructor.Mode.JSON_SCHEMA)

        async def ask() -> str:
            definition = await client.chat.completions.create(
                model=MODEL, response_model=Definition, messages=[{"role": "user", "content": PROMPT}]
            )
            return as_text(definition)

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, ask))


@pytest.mark.anyio
async def test_streamed_partials_share_one_upstream_call(
    api: FakeLLMAPI, url: str, make_transport: MakeTransport
) -> None:
    transport = make_transport()
    async with AsyncOpenAI(
        base_url=url + "/v1", api_key="sk-test", http_client=httpx2.AsyncClient(transport=transport)
    ) as openai_client:
        client = instructor.from_openai(openai_client, mode=instructor.Mode.JSON_SCHEMA)

        async def stream() -> str:
            partials = [
                partial
                async for partial in client.chat.completions.create_partial(
                    model=MODEL, response_model=Definition, messages=[{"role": "user", "content": PROMPT}]
                )
            ]
            assert len(partials) > 1  # it did stream
            return as_text(Definition.model_validate(partials[-1].model_dump()))

        assert_one_upstream_call(api, transport, PATH, await overlap(api, transport, stream, stream=True))


def test_sync_calls_share_one_upstream_call(api: FakeLLMAPI, url: str, make_transport: MakeTransport) -> None:
    transport = make_transport()
    with OpenAI(
        base_url=url + "/v1", api_key="sk-test", http_client=httpx2.Client(transport=transport)
    ) as openai_client:
        client = instructor.from_openai(openai_client, mode=instructor.Mode.JSON_SCHEMA)

        def ask() -> str:
            definition = client.chat.completions.create(
                model=MODEL, response_model=Definition, messages=[{"role": "user", "content": PROMPT}]
            )
            return as_text(definition)

        assert_one_upstream_call(api, transport, PATH, overlap_threads(api, transport, ask))
