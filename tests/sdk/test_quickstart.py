"""Every Python block of docs/sdk-quickstart.md, run as written against the fake API.

Blocks are found by the ``<!-- snippet: name -->`` comment before them; the SDKs find the fake API through
their usual environment variables. Where a snippet fires concurrent calls, the fake API holds the upstream
call until all of them have joined, so "one upstream call" is checked exactly.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import TextBlockParam

from httpx_coalesce import CoalescingTransport
from httpx_coalesce._demo.fake_api import FakeLLMAPI

from ..conftest import until_sync
from ..support.choreography import Conductor, overlap_threads
from .support import CLAUDE, GPT, Direct, chat_messages, claude_messages

DOC = Path(__file__).resolve().parents[2] / "docs" / "sdk-quickstart.md"
_SNIPPET = re.compile(r"<!-- snippet: ([\w-]+) -->\n```python\n(.*?)\n```", re.DOTALL)

Namespace = dict[str, Any]
Run = Callable[..., Namespace]


def snippets() -> dict[str, str]:
    return dict(_SNIPPET.findall(DOC.read_text(encoding="utf-8")))


@pytest.fixture
def environment(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDKs find the fake API (and a key) where they always look: the environment."""
    for name in ("OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{url}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")


@pytest.fixture
def run(environment: None) -> Iterator[Run]:
    """Run a snippet by name (in *namespace*, or a fresh one); SDK clients it leaves open are closed after."""
    namespaces: list[Namespace] = []

    def run(name: str, namespace: Namespace | None = None) -> Namespace:
        namespace = {} if namespace is None else namespace
        namespace["__name__"] = f"sdk_quickstart_{name.replace('-', '_')}"
        namespaces.append(namespace)
        exec(compile(snippets()[name], f"<docs/sdk-quickstart.md:{name}>", "exec"), namespace)
        return namespace

    yield run
    for namespace in namespaces:
        for value in namespace.values():
            if isinstance(value, openai.OpenAI | anthropic.Anthropic):
                value.close()


def waiters(namespace: Namespace) -> int:
    """Callers attached to flights of the snippet's ``transport``, while the snippet runs."""
    transport = namespace.get("transport")
    return transport.stats().waiters if isinstance(transport, CoalescingTransport) else 0


@contextmanager
def held_until(api: FakeLLMAPI, condition: Callable[[], bool]) -> Iterator[None]:
    """Hold upstream calls at the fake API until *condition* holds (checked from a thread of its own)."""
    hold = api.hold = threading.Event()

    def watch() -> None:
        try:
            until_sync(condition)
        except TimeoutError:
            pass  # the test's own assertions say what went wrong
        finally:
            hold.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        hold.set()
        watcher.join()
        api.hold = None


def test_every_python_block_of_the_quickstart_is_a_named_snippet() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert text.count("```python") == len(snippets())
    assert set(snippets()) == {
        "openai-sync",
        "openai-async",
        "openai-httpx",
        "anthropic-sync",
        "anthropic-async",
        "opt-out",
        "ignore-fields",
        "key-function",
    }


def test_openai_sync_quickstart_answers_and_shows_how_it_was_served(
    run: Run, api: FakeLLMAPI, direct: Direct, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = direct.chat("Summarise the release notes in one line.")
    run("openai-sync")
    answer, info = capsys.readouterr().out.splitlines()
    assert answer == expected
    assert info.startswith("CoalesceInfo(leader=True, callers=1, flight_id=")
    assert api.hits == 1


def test_openai_async_quickstart_makes_one_upstream_call_for_ten_callers(
    run: Run, api: FakeLLMAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace: Namespace = {}
    with held_until(api, lambda: waiters(namespace) == 10):
        run("openai-async", namespace)
    assert api.hits == 1
    assert capsys.readouterr().out.splitlines() == ["1 answer for 10 callers", "1 upstream call"]


def test_openai_quickstart_with_a_plain_httpx_client_works(
    run: Run, api: FakeLLMAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    run("openai-httpx")
    assert capsys.readouterr().out.split() == [str(api.embedding_dims), "1"]
    assert api.hits == 1


def test_anthropic_sync_quickstart_answers(
    run: Run, api: FakeLLMAPI, direct: Direct, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = direct.message("Name three uses of a paperclip.", max_tokens=256)
    run("anthropic-sync")
    assert capsys.readouterr().out.strip() == expected
    assert api.hits == 1


def test_anthropic_async_quickstart_makes_one_upstream_call_for_five_streams(
    run: Run, api: FakeLLMAPI, direct: Direct, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = direct.message("Summarise today's incident report.", max_tokens=256)
    namespace: Namespace = {}
    with held_until(api, lambda: waiters(namespace) == 5):
        run("anthropic-async", namespace)
    assert api.hits == 1
    text, stats = capsys.readouterr().out.splitlines()
    assert text == expected
    assert "upstream_calls=1, coalesced=4," in stats


def test_opt_out_snippet_sends_each_call_upstream_without_the_header(
    run: Run, api: FakeLLMAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    namespace = run("opt-out")
    assert api.hits == 3
    assert all("x-coalesce" not in headers for headers in api.seen_headers)
    assert capsys.readouterr().out.strip() == "{'opt_out': 3}"
    assert namespace["transport"].stats().upstream_calls == 3  # pass-through counts: the server saw 3


def test_ignore_fields_snippet_lets_different_end_users_share_a_flight(run: Run, api: FakeLLMAPI) -> None:
    namespace = run("ignore-fields")
    client: openai.OpenAI = namespace["client"]

    def asker(user: str) -> Callable[[], str]:
        def ask() -> str:
            completion = client.chat.completions.create(
                model=GPT, messages=chat_messages("opening hours?"), user=user, metadata={"tab": user}
            )
            return completion.id

        return ask

    ids = overlap_threads(Conductor(api, namespace["transport"], 4), [asker(f"user-{n}") for n in range(4)])
    assert api.hits == 1
    assert len(set(ids)) == 1


def test_key_function_snippet_ignores_cache_marks_and_metadata_only(run: Run, api: FakeLLMAPI) -> None:
    namespace = run("key-function")
    client: anthropic.Anthropic = namespace["client"]
    transport: CoalescingTransport = namespace["transport"]

    def asker(text: str, marked: bool, user: str) -> Callable[[], str]:
        block: TextBlockParam = {"type": "text", "text": text}
        if marked:
            block["cache_control"] = {"type": "ephemeral"}

        def ask() -> str:
            message = client.messages.create(
                model=CLAUDE,
                max_tokens=8,
                system=[block],
                messages=claude_messages("same question"),
                metadata={"user_id": user},
            )
            return message.id

        return ask

    calls = [asker("You are terse.", marked=n % 2 == 0, user=f"user-{n}") for n in range(4)]
    ids = overlap_threads(Conductor(api, transport, 4), calls)
    assert api.hits == 1
    assert len(set(ids)) == 1

    api.reset()
    calls = [asker("You are terse.", marked=True, user="a"), asker("You are verbose.", marked=True, user="a")]
    ids = overlap_threads(Conductor(api, transport, 2, flights=2), calls)
    assert api.hits == 2
    assert len(set(ids)) == 2
