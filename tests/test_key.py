"""The key: what makes two requests the same request. Unit tests and properties."""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from httpx_coalesce import CREDENTIAL_HEADERS, DEFAULT_IGNORED_HEADERS, CoalescingTransport, RequestParts
from httpx_coalesce._key import KeyRules
from httpx_coalesce._request import HeaderRoles, inspect, request_parts


def key_of(request: httpx.Request, transport: CoalescingTransport | None = None) -> str:
    transport = transport or CoalescingTransport()
    request.read()
    inspection = inspect(request, frozenset({"POST", "PUT"}), HeaderRoles("x-coalesce"))
    return transport._key(request, inspection, request.content)


def parts_of(request: httpx.Request) -> RequestParts:
    return request_parts(
        request, inspect(request, frozenset({"POST", "PUT"}), HeaderRoles("x-coalesce")), request.content
    )


URL = "https://api.example.com/v1/chat"


def post(body: bytes | None = None, url: str = URL, headers: dict[str, str] | None = None) -> httpx.Request:
    all_headers = {"content-type": "application/json", **(headers or {})}
    return httpx.Request("POST", url, content=body if body is not None else b'{"q": 1}', headers=all_headers)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**15) + 1, 10**15 - 1) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(document=st.dictionaries(st.text(max_size=6), json_values, max_size=6), seed=st.randoms())
def test_equal_json_documents_give_equal_keys_whatever_their_key_order_spacing_or_escapes(
    document: dict[str, Any], seed: Any
) -> None:
    items = list(document.items())
    seed.shuffle(items)
    compact = orjson.dumps(document)
    spaced = json.dumps(
        dict(items), indent=seed.choice([None, 1, 4]), ensure_ascii=seed.choice([True, False])
    )
    assert key_of(post(compact)) == key_of(post(spaced.encode()))


@settings(max_examples=100, deadline=None)
@given(document=st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=6), data=st.data())
def test_any_change_to_a_body_field_changes_the_key(document: dict[str, Any], data: Any) -> None:
    field = data.draw(st.sampled_from(sorted(document)))
    changed = {**document, field: ["changed", document[field]]}
    assert key_of(post(orjson.dumps(document))) != key_of(post(orjson.dumps(changed)))


@settings(max_examples=100, deadline=None)
@given(
    volatile=st.dictionaries(
        st.sampled_from(sorted(DEFAULT_IGNORED_HEADERS - {"content-length"})),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10),
    )
)
def test_volatile_headers_never_matter(volatile: dict[str, str]) -> None:
    assert key_of(post(headers=volatile)) == key_of(post())


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(
        sorted(CREDENTIAL_HEADERS | {"anthropic-beta", "anthropic-version", "openai-project"})
    ),
    value=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
)
def test_credentials_always_matter_even_when_configured_out(name: str, value: str) -> None:
    with pytest.warns(UserWarning, match="credential"):
        everything_ignored = CoalescingTransport(ignore_headers=CREDENTIAL_HEADERS | {name})
    assert key_of(post(headers={name: value}), everything_ignored) != key_of(post(), everything_ignored)
    assert key_of(post(headers={name: value})) != key_of(post(headers={name: value + "x"}))


def test_method_url_and_query_order_take_part() -> None:
    base = key_of(post(url="https://api.example.com/v1/chat?a=1&b=2"))
    assert base != key_of(post(url="https://api.example.com/v1/chat?b=2&a=1"))
    assert base != key_of(post(url="https://api.example.com/v1/other?a=1&b=2"))
    assert base != key_of(post(url="http://api.example.com/v1/chat?a=1&b=2"))
    put = httpx.Request("PUT", "https://api.example.com/v1/chat?a=1&b=2", content=b'{"q": 1}')
    assert base != key_of(put)


def test_scheme_and_host_case_and_default_port_do_not_matter() -> None:
    assert key_of(post(url="https://api.example.com/v1")) == key_of(
        post(url="HTTPS://API.Example.COM:443/v1")
    )
    assert key_of(post(url="https://api.example.com/v1")) != key_of(
        post(url="https://api.example.com:8443/v1")
    )


def test_header_names_compare_case_insensitively() -> None:
    assert key_of(post(headers={"X-Custom": "1"})) == key_of(post(headers={"x-custom": "1"}))


def test_ignored_json_fields_are_left_out_at_the_top_level_only() -> None:
    transport = CoalescingTransport(ignore_json_fields={"user", "metadata"})
    a = post(b'{"q": 1, "user": "alice", "metadata": {"trace": 1}}')
    b = post(b'{"q": 1, "user": "bob"}')
    assert key_of(a, transport) == key_of(b, transport)
    assert key_of(post(b'{"q": {"user": "alice"}}'), transport) != key_of(
        post(b'{"q": {"user": "bob"}}'), transport
    )


def test_ignore_headers_replaces_the_default_list() -> None:
    transport = CoalescingTransport(ignore_headers={"x-mine"})
    assert key_of(post(headers={"x-mine": "1"}), transport) == key_of(
        post(headers={"x-mine": "2"}), transport
    )
    assert key_of(post(headers={"traceparent": "a"}), transport) != key_of(
        post(headers={"traceparent": "b"}), transport
    )
    added = CoalescingTransport(ignore_headers=DEFAULT_IGNORED_HEADERS | {"x-mine"})
    assert key_of(post(headers={"traceparent": "a", "x-mine": "1"}), added) == key_of(
        post(headers={"traceparent": "b"}), added
    )


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe not utf-8",
        b'{"a": 1, "a": 2}',
        b"[" * 5000 + b"]" * 5000,
        b'{"unterminated": ',
    ],
    ids=["not-utf8", "duplicate-keys", "deep-nesting", "malformed"],
)
def test_odd_bodies_are_keyed_without_crashing(body: bytes) -> None:
    assert len(key_of(post(body))) == 40
    assert key_of(post(body)) != key_of(post(body + b" "))


def test_a_long_number_in_a_body_written_as_orjson_writes_it_is_keyed_canonically() -> None:
    # Compact, in its own order: parsing lost nothing, so the order of members does not matter...
    assert key_of(post(b'{"a":1,"t":1234567890123456}')) == key_of(post(b'{"t":1234567890123456,"a":1}'))
    # ...while a writing that parsing changed is still keyed by its bytes.
    assert key_of(post(b'{"t":0.12345678901234568}')) != key_of(post(b'{"t":0.123456789012345677}'))
    assert key_of(post(b'{"t":1234567890123456,"a":1}')) != key_of(post(b'{"t": 1234567890123456, "a": 1}'))


def test_json_numbers_keep_their_type() -> None:
    # 1 and 1.0 may mean different things to an API; keeping them apart is always safe.
    assert key_of(post(b'{"t": 1}')) != key_of(post(b'{"t": 1.0}'))
    assert key_of(post(b'{"t": 1.0}')) == key_of(post(b'{"t": 1.00}'))


def test_a_custom_key_function_still_keeps_tenants_apart() -> None:
    seen: list[RequestParts] = []

    def by_path(parts: RequestParts) -> str:
        seen.append(parts)
        return parts.target.decode()

    transport = CoalescingTransport(key=by_path)
    assert key_of(post(b'{"q": 1}'), transport) == key_of(post(b'{"q": 2}'), transport)
    assert key_of(post(headers={"authorization": "Bearer a"}), transport) != key_of(
        post(headers={"authorization": "Bearer b"}), transport
    )
    assert seen[0].method == "POST"


def test_the_key_never_contains_a_credential() -> None:
    secret = "sk-live-very-secret-value"
    request = post(headers={"authorization": f"Bearer {secret}"})
    key = key_of(request)
    assert secret not in key
    assert "Bearer" not in key
    assert KeyRules().key(parts_of(request)) == key


def test_a_trailing_star_ignores_a_family_of_headers_but_never_a_credential() -> None:
    sdk_a = {"x-stainless-raw-response": "true", "x-stainless-os": "Linux"}
    sdk_b = {"x-stainless-helper-method": "chat.completions.parse", "x-stainless-os": "MacOS"}
    assert key_of(post(headers=sdk_a)) == key_of(post(headers=sdk_b))
    with pytest.warns(UserWarning, match="credential"):
        greedy = CoalescingTransport(ignore_headers={"x-api-*", "anthropic-*", "x-*"})
    assert key_of(post(headers={"x-api-key": "a"}), greedy) != key_of(
        post(headers={"x-api-key": "b"}), greedy
    )
    assert key_of(post(headers={"anthropic-beta": "a"}), greedy) != key_of(
        post(headers={"anthropic-beta": "b"}), greedy
    )
    assert key_of(post(headers={"x-trace": "a"}), greedy) == key_of(post(headers={"x-trace": "b"}), greedy)


def test_headers_that_smuggle_separators_never_read_as_other_headers() -> None:
    # No valid request holds these bytes; the key must still tell the two apart.
    smuggled = {"x-api-key": "key\nx-tenant\x00other"}
    plain = {"x-api-key": "key", "x-tenant": "other"}
    assert key_of(post(headers=smuggled)) != key_of(post(headers=plain))


@pytest.mark.parametrize("name", ["", "x-coalesce-é"])
def test_an_opt_out_header_that_cannot_be_a_header_name_is_refused_at_once(name: str) -> None:
    with pytest.raises(ValueError, match="opt_out_header"):
        CoalescingTransport(opt_out_header=name)


_PLANNED_NAMES = [
    "Content-Type", "content-type", "Host", "host", "Authorization", "x-api-key", "Accept",
    "x-stainless-os", "traceparent", "x-custom", "X-Custom", "Upgrade", "x-coalesce", "a%b", "content-length",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(_PLANNED_NAMES),
            st.sampled_from(["application/json", "Example.COM:443", "v", "%s", "a\nb", "x\x00y", "off", ""]),
        ),
        max_size=6,
    ),
    method=st.sampled_from(["POST", "GET", "PUT", "CONNECT"]),
)
def test_a_header_plan_picks_what_the_header_by_header_loop_picks(
    headers: list[tuple[str, str]], method: str
) -> None:
    # The plan (learnt from the names once, then used) against the loop it stands for,
    # which a transport whose key is a function of the user's still runs.
    rules = KeyRules()
    raw = [(name.encode(), value.encode()) for name, value in headers]
    roles = HeaderRoles("x-coalesce", rules.keeps)
    for _ in range(2):
        request = httpx.Request(method, "https://api.example.com/v1", headers=raw, content=b"{}")
        planned = inspect(request, frozenset({"POST", "PUT"}), roles)
        looped = inspect(
            httpx.Request(method, "https://api.example.com/v1", headers=raw, content=b"{}"),
            frozenset({"POST", "PUT"}),
            HeaderRoles("x-coalesce"),
        )
        assert planned.reason == looped.reason
        assert planned.content_type == looped.content_type
        kept = [header for header in looped.headers if rules.keeps(header[0])]
        assert sorted(planned.headers, key=itemgetter(0)) == sorted(kept, key=itemgetter(0))
        parts = ("POST", "https", "api.example.com", None, b"/v1")
        lines = planned.lines
        planned_key = (
            rules.digest(*parts, list(planned.headers), b"{}", b"")
            if lines is None
            else rules.digest_lines(*parts, lines, b"{}", b"")
        )
        assert planned_key == rules.key_of(*parts, looped.headers, b"{}", b"")


@settings(max_examples=100, deadline=None)
@given(
    bodies=st.lists(
        st.sampled_from([b'{"q": 1}', b'{"q":1}', b'{"q": 2}', b'{"a":1,"a":2}', b"[1]"]), max_size=8
    )
)
def test_a_body_keyed_after_another_is_keyed_as_if_first(bodies: list[bytes]) -> None:
    # The last JSON body's canonical form is kept for the next: never for a different one.
    rules = KeyRules()
    for body in bodies:
        assert rules.canonical_body(body, b"application/json") == KeyRules().canonical_body(
            body, b"application/json"
        )
