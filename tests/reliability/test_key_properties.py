"""Properties of the key beyond tests/test_key.py: numbers, escapes, and that any
change to the method, the URL or a credential gives another key.

Numbers (a decision taken for the project): ``1`` and ``1.0`` are different numbers
(an integer and a float may mean different things to an API), while ``1.0``, ``1.00``,
``1e0`` and ``10E-1`` are the same float and key the same: floats compare by value,
whatever their writing. Integers compare exactly, however large.

A number written with 16 digits or more (integer and fraction parts together) makes
the whole body keyed by its bytes: past 15 digits a double may not tell two writings
apart, and orjson turns integers past 64 bits into floats. So such bodies share only
when they are identical byte for byte (never wrongly, only less often).

Duplicate keys: a body with a key twice in one object is keyed by its bytes (orjson
keeps the last, a server may keep the first). The property over generated JSON texts
below shows two bodies never share a key unless a first-wins and a last-wins parser
both read them the same.

Examples are kept modest (``max_examples``) so the default run stays fast; set
``HYPOTHESIS_PROFILE`` as usual to run more.
"""

from __future__ import annotations

import math
from decimal import Decimal

import httpx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from httpx_coalesce import CREDENTIAL_HEADERS, CoalescingTransport, RequestParts

URL = "https://api.example.com/v1/chat"
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
TRANSPORT = CoalescingTransport(methods=METHODS)

finite_floats = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != 0.0)
#: Non-zero floats whose shortest writing has at most 13 digits, so they can be written
#: several ways under the 16-digit limit (most random doubles need 17 and would all be
#: filtered out, which fails Hypothesis' health check now and then).
short_floats = st.builds(
    lambda sign, digits, exponent: float(f"{sign}{digits}e{exponent}"),
    st.sampled_from(["", "-"]),
    st.integers(1, 10**13 - 1),
    st.integers(-290, 290),
)


def key_of(
    body: bytes = b'{"q": 1}',
    *,
    method: str = "POST",
    url: str = URL,
    headers: dict[str, str | bytes] | None = None,
    transport: CoalescingTransport = TRANSPORT,
) -> str:
    raw = [(b"content-type", b"application/json")] + [
        (name.encode(), value if isinstance(value, bytes) else value.encode())
        for name, value in (headers or {}).items()
    ]
    request = httpx.Request(method, url, content=body, headers=raw)
    # Through the transport's own door (bypass rules, body reading, key), as a request
    # it handles would go.
    key = transport._key_of(request)
    assert key is not None, "the request passed through instead of coalescing"
    return key


def float_writings(value: float) -> list[str]:
    """Ways to write *value* in JSON that all parse to the same float, each with a
    fraction or an exponent (so none of them is an integer)."""
    shortest = repr(value)  # e.g. '0.1', '1e+16', '1.5e-07'
    mantissa, _, exponent = shortest.partition("e")
    writings = [shortest, format(value, ".17e"), format(value, ".17E"), shortest.upper()]
    if "." in mantissa:
        writings.append(mantissa + "000" + (f"e{exponent}" if exponent else ""))
    if not exponent:
        writings.append(f"{shortest}e0")
        writings.append(f"{shortest}E+00")
    return writings


def mantissa_digits(written: str) -> int:
    return sum(char.isdigit() for char in written.lower().partition("e")[0])


@settings(max_examples=150, deadline=None)
@given(value=short_floats, data=st.data())
def test_a_float_keys_the_same_however_it_is_written(value: float, data: st.DataObject) -> None:
    writings = [w for w in float_writings(value) if mantissa_digits(w) < 16]
    assume(writings)
    first, second = data.draw(st.sampled_from(writings)), data.draw(st.sampled_from(writings))
    assert float(first) == float(second) == value
    assert key_of(b'{"t": %s}' % first.encode()) == key_of(b'{"t": %s}' % second.encode())


@settings(max_examples=100, deadline=None)
@given(number=st.integers(-(2**53), 2**53), data=st.data())
def test_an_integer_and_the_same_value_as_a_float_key_differently(number: int, data: st.DataObject) -> None:
    written = data.draw(st.sampled_from([f"{number}.0", f"{number}.00", f"{number}e0", f"{number}.0E+0"]))
    assert key_of(b'{"t": %d}' % number) != key_of(b'{"t": %s}' % written.encode())


@settings(max_examples=150, deadline=None)
@given(first=finite_floats, second=finite_floats)
def test_different_floats_key_differently(first: float, second: float) -> None:
    assume(first != second)
    assert key_of(b'{"t": %r}' % first) != key_of(b'{"t": %r}' % second)


@settings(max_examples=50, deadline=None)
@given(number=st.integers(2**64, 2**80))
def test_distinct_integers_past_64_bits_key_differently(number: int) -> None:
    assert key_of(b'{"id": %d}' % number) != key_of(b'{"id": %d}' % (number + 1))


def test_a_long_writing_of_a_number_keys_by_the_bodys_bytes() -> None:
    assert key_of(b'{"t": 1.00000000000000000}') != key_of(b'{"t": 1.0}')
    assert key_of(b'{"a": 1, "t": 1234567890123456}') != key_of(b'{"t": 1234567890123456, "a": 1}')
    assert key_of(b'{"a": 1, "t": 123456789012345}') == key_of(b'{"t": 123456789012345, "a": 1}')


def test_a_big_integer_and_a_float_near_it_key_differently() -> None:
    big = 123456789012345678901234567890
    assert key_of(b'{"id": %d}' % big) != key_of(b'{"id": %r}' % float(big))


def escape(text: str, choices: list[int]) -> str:
    """*text* as a JSON string, each character written plainly or as a \\u escape
    (upper or lower hex; astral characters as surrogate pairs), as *choices* say."""
    out = []
    for char, choice in zip(text, choices, strict=True):
        code = ord(char)
        must = char in '"\\' or code < 0x20
        if choice == 0 and not must:
            out.append(char)
        elif code >= 0x10000:
            high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
            out.append(f"\\u{high:04x}\\u{low:04X}" if choice == 1 else f"\\u{high:04X}\\u{low:04x}")
        else:
            out.append(f"\\u{code:04x}" if choice != 2 else f"\\u{code:04X}")
    return '"' + "".join(out) + '"'


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=12), data=st.data())
def test_a_string_keys_the_same_whichever_characters_are_escaped(text: str, data: st.DataObject) -> None:
    choices = data.draw(st.lists(st.integers(0, 2), min_size=len(text), max_size=len(text)))
    plain = escape(text, [0] * len(text))
    escaped = escape(text, choices)
    assert key_of(b'{"s": %s}' % plain.encode()) == key_of(b'{"s": %s}' % escaped.encode())


def test_an_escaped_slash_keys_like_a_plain_one() -> None:
    assert key_of(b'{"u": "a\\/b"}') == key_of(b'{"u": "a/b"}')


@settings(max_examples=100, deadline=None)
@given(first=st.text(max_size=8), second=st.text(max_size=8))
def test_different_strings_key_differently_even_when_escaped(first: str, second: str) -> None:
    assume(first != second)
    assert key_of(b'{"s": %s}' % escape(first, [1] * len(first)).encode()) != key_of(
        b'{"s": %s}' % escape(second, [0] * len(second)).encode()
    )


segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_~", min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(first=st.sampled_from(METHODS), second=st.sampled_from(METHODS))
def test_any_change_of_method_changes_the_key(first: str, second: str) -> None:
    assume(first != second)
    assert key_of(method=first) != key_of(method=second)


@st.composite
def urls(draw: st.DrawFn) -> tuple[str, str, int | None, list[str], list[tuple[str, str]]]:
    return (
        draw(st.sampled_from(["http", "https"])),
        draw(segment) + ".example",
        draw(st.none() | st.integers(1, 65535)),
        draw(st.lists(segment, max_size=3)),
        draw(st.lists(st.tuples(segment, segment), max_size=3)),
    )


def url_of(parts: tuple[str, str, int | None, list[str], list[tuple[str, str]]]) -> str:
    scheme, host, port, path, query = parts
    default = {"http": 80, "https": 443}[scheme]
    authority = host if port in (None, default) else f"{host}:{port}"
    url = f"{scheme}://{authority}/" + "/".join(path)
    if query:
        url += "?" + "&".join(f"{name}={value}" for name, value in query)
    return url


@settings(max_examples=150, deadline=None)
@given(first=urls(), second=urls())
def test_any_change_of_url_changes_the_key(
    first: tuple[str, str, int | None, list[str], list[tuple[str, str]]],
    second: tuple[str, str, int | None, list[str], list[tuple[str, str]]],
) -> None:
    assume(url_of(first) != url_of(second))
    assert key_of(url=url_of(first)) != key_of(url=url_of(second))


credential_names = st.sampled_from(sorted(CREDENTIAL_HEADERS)) | st.builds(
    str.__add__, st.sampled_from(["anthropic-", "openai-", "x-api-", "x-goog-"]), segment
)
# Header values as bytes on the wire: any octet but the ones that end a header line.
header_values = st.binary(min_size=1, max_size=16).filter(
    lambda value: not set(value) & {0, 10, 13} and value == value.strip()
)


@settings(max_examples=150, deadline=None)
@given(name=credential_names, first=header_values, second=header_values, custom=st.booleans())
def test_any_change_of_a_credential_changes_the_key_even_with_a_custom_key(
    name: str, first: bytes, second: bytes, custom: bool
) -> None:
    assume(first != second)

    def constant(parts: RequestParts) -> str:
        return "everything is the same request"

    with pytest.warns(UserWarning, match="credential"):  # and it stays in the key
        transport = (
            CoalescingTransport(key=constant, ignore_headers={name}, methods=METHODS)
            if custom
            else CoalescingTransport(ignore_headers={name}, methods=METHODS)
        )
    assert key_of(headers={name: first}, transport=transport) != key_of(
        headers={name: second}, transport=transport
    )
    assert key_of(headers={name: first}, transport=transport) != key_of(transport=transport)
    # The name's case does not make another tenant; its value's does.
    assert key_of(headers={name.upper(): first}, transport=transport) == key_of(
        headers={name: first}, transport=transport
    )


def test_numbers_near_the_edges_of_a_double_key_by_value() -> None:
    assert key_of(b'{"t": 1e308}') == key_of(b'{"t": 10e307}')
    assert key_of(b'{"t": 5e-324}') == key_of(b'{"t": 0.5e-323}')
    assert key_of(b'{"t": 5e-324}') != key_of(b'{"t": 4.9406564584124654e-324}')  # 17 digits: by bytes
    assert not math.isinf(float("1.7976931348623157e308"))
    # Past a double: not JSON orjson accepts; keyed by bytes (never shared wrongly).
    assert key_of(b'{"t": 1e400}') != key_of(b'{"t": 1e401}')


# -- duplicate keys: bodies share a key only when every parser reads them the same ----

#: Characters that stress the duplicate-key detection: colons (plain or escaped),
#: quotes and backslashes (always escaped), non-ASCII and astral characters.
_CHARS = st.sampled_from(["a", "b", ":", '"', "\\", "\u00e9", "\U0001f600", "\n", "u", "0", "3"])
_texts = st.text(alphabet=_CHARS, max_size=5)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(10**15 - 1), 10**15 - 1)  # past 15 digits, a body is keyed by bytes
    | short_floats
    | _texts
)
_values = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_texts, children, max_size=3),
    max_leaves=8,
)


def _render(value: object, data: st.DataObject, duplicates: bool) -> str:
    """*value* as JSON text: strings escaped at random, and with *duplicates*, objects
    may get a key twice (another value before or after the real one)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # repr writes 1e14 as 100000000000000.0: past 15 digits, which keys by bytes.
        written = repr(value)
        return written if mantissa_digits(written) <= 15 else str(Decimal(written).normalize())
    if isinstance(value, str):
        return escape(value, data.draw(st.lists(st.integers(0, 2), min_size=len(value), max_size=len(value))))
    if isinstance(value, list):
        return "[" + ",".join(_render(item, data, duplicates) for item in value) + "]"
    assert isinstance(value, dict)
    members = [(key, _render(item, data, duplicates)) for key, item in value.items()]
    if duplicates and members and data.draw(st.booleans()):
        index = data.draw(st.integers(0, len(members) - 1))
        other = _render(data.draw(_leaves), data, duplicates=False)
        members.insert(data.draw(st.integers(0, len(members))), (members[index][0], other))
    sep = data.draw(st.sampled_from([":", " : "]))
    return "{" + ",".join(_render(key, data, False) + sep + item for key, item in members) + "}"


def _tagged(value: object) -> object:
    """*value* compared strictly: 1, 1.0 and true differ, as they may to an API."""
    if isinstance(value, dict):
        return ("dict", {key: _tagged(item) for key, item in value.items()})
    if isinstance(value, list):
        return ("list", [_tagged(item) for item in value])
    return (type(value).__name__, repr(value))


def _readings(text: str) -> tuple[object, object]:
    """As a first-wins parser and a last-wins parser read *text*."""
    import json

    first = json.loads(text, object_pairs_hook=lambda pairs: dict(reversed(pairs)))
    last = json.loads(text)
    return _tagged(first), _tagged(last)


@settings(max_examples=300, deadline=None)
@given(first=_values, second=_values, same=st.booleans(), data=st.data())
def test_two_bodies_share_a_key_only_when_first_wins_and_last_wins_parsers_agree(
    first: object, second: object, same: bool, data: st.DataObject
) -> None:
    # Half the time both texts write the same value (escaped differently, duplicates
    # added), so keys collide often enough for the property to bite.
    one = _render(first, data, duplicates=True)
    other = _render(first if same else second, data, duplicates=True)
    if key_of(one.encode()) == key_of(other.encode()):
        assert _readings(one) == _readings(other)


@settings(max_examples=150, deadline=None)
@given(value=_values, data=st.data())
def test_one_value_written_with_other_escapes_still_shares_a_key(value: object, data: st.DataObject) -> None:
    # Pass: exact duplicate detection does not cost sharing between equal bodies.
    assert key_of(_render(value, data, False).encode()) == key_of(_render(value, data, False).encode())


def test_an_escaped_colon_cannot_hide_a_duplicate_key() -> None:
    # The case that fooled a count of colons: orjson reads both as {"a": ":"}, a
    # first-wins parser reads the first as {"a": "x"}.
    assert key_of(b'{"a":"x","a":"\\u003a"}') != key_of(b'{"a":":"}')
    assert key_of(b'{"a":"\\u003a"}') == key_of(b'{"a":":"}')
    assert key_of(b'{"a":"\\\\u003a"}') != key_of(b'{"a":":"}')
