"""Bad arguments are refused where they are given, with a message that says what was
expected and what was given; the command line has real help."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
import httpx
import pytest

from httpx_coalesce import DEFAULT_IGNORED_HEADERS, CoalescingTransport, Limits, __version__
from httpx_coalesce.__main__ import main
from httpx_coalesce._key import KeyRules

from .conftest import until


def build(**options: Any) -> CoalescingTransport:
    """CoalescingTransport(**options), untyped: these tests give wrong types on purpose."""
    return CoalescingTransport(**options)


def make_limits(**fields: Any) -> Limits:
    return Limits(**fields)


# -- wrong types: TypeError, naming the argument, what was expected and what was given --

#: The options that take a collection of names.
NAME_OPTIONS = ["methods", "ignore_headers", "ignore_json_fields"]


@pytest.mark.parametrize("option", NAME_OPTIONS)
def test_a_bare_string_where_names_are_expected_is_refused_not_read_letter_by_letter(option: str) -> None:
    with pytest.raises(TypeError, match=rf"{option} must be a collection of names.*bare str 'POST'"):
        build(**{option: "POST"})


@pytest.mark.parametrize("option", NAME_OPTIONS)
def test_bytes_where_names_are_expected_are_refused(option: str) -> None:
    with pytest.raises(TypeError, match=rf"{option} must be a collection of str names, not bytes"):
        build(**{option: b"POST"})


@pytest.mark.parametrize("option", NAME_OPTIONS)
def test_names_that_are_no_collection_are_refused(option: str) -> None:
    with pytest.raises(TypeError, match=rf"{option} must be a collection of str names.*not int 5"):
        build(**{option: 5})


@pytest.mark.parametrize("option", NAME_OPTIONS)
def test_a_name_that_is_no_string_is_refused(option: str) -> None:
    with pytest.raises(TypeError, match=rf"{option} must hold only str names; got bytes b'x'"):
        build(**{option: ["x", b"x"]})


def test_a_transport_without_a_handle_method_is_refused() -> None:
    with pytest.raises(TypeError, match=r"transport must be an httpx or httpx2 transport.*got str 'x'"):
        build(transport="x")


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        (httpx.AsyncClient, "transport=httpx.AsyncHTTPTransport()"),
        (httpx.Client, "transport=httpx.HTTPTransport()"),
    ],
)
def test_a_client_given_as_transport_is_refused_with_a_pointer_to_transports(
    client: Callable[[], Any], expected: str
) -> None:
    with pytest.raises(TypeError, match="not a client") as refused:
        build(transport=client())
    assert expected in str(refused.value)


def test_an_httpx2_client_given_as_transport_names_httpx2_transports() -> None:
    httpx2 = pytest.importorskip("httpx2")
    with pytest.raises(TypeError, match=r"not a client \(httpx2\.AsyncClient\)") as refused:
        build(transport=httpx2.AsyncClient())
    assert "transport=httpx2.AsyncHTTPTransport()" in str(refused.value)


def test_a_transport_class_instead_of_an_instance_is_refused() -> None:
    with pytest.raises(TypeError, match=r"not the class httpx\.AsyncHTTPTransport: call it"):
        build(transport=httpx.AsyncHTTPTransport)


def test_a_redis_url_given_as_backend_points_to_from_url_without_showing_the_password() -> None:
    with pytest.raises(
        TypeError, match=r"backend must be a Backend, not a str.*RedisBackend\.from_url"
    ) as refused:
        build(backend="redis://user:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in str(refused.value)
    assert "127.0.0.1:6379" in str(refused.value)


def test_a_redis_client_given_as_backend_is_refused_with_how_to_wrap_it() -> None:
    redis = pytest.importorskip("redis")
    with pytest.raises(TypeError, match=r"not a Redis client.*RedisBackend\(client\)"):
        build(backend=redis.Redis(host="127.0.0.1"))


def test_an_object_that_is_no_backend_is_refused_with_the_missing_methods() -> None:
    class HalfBackend:
        def bind(self, *args: object) -> None: ...

    with pytest.raises(TypeError, match=r"Backend protocol.*lacks send_async, send_sync, aclose, close"):
        build(backend=HalfBackend())


def test_a_key_that_cannot_be_called_is_refused() -> None:
    with pytest.raises(TypeError, match=r"key must be a function.*not str 'x'"):
        build(key="x")


def test_key_rules_given_whole_as_key_point_to_their_key_method() -> None:
    with pytest.raises(TypeError, match=r"key=rules\.key"):
        build(key=KeyRules())


@pytest.mark.parametrize("window", [True, "1", None])
def test_a_window_that_is_no_number_is_refused(window: object) -> None:
    with pytest.raises(TypeError, match=r"window must be a number of seconds"):
        build(window=window)


def test_limits_given_as_a_dict_are_refused_with_how_to_make_them() -> None:
    with pytest.raises(TypeError, match=r"limits must be an httpx_coalesce\.Limits, not dict.*Limits\(\*\*"):
        build(limits={"max_flights": 10})


def test_httpx_pool_limits_given_as_limits_are_sent_to_the_inner_transport() -> None:
    with pytest.raises(TypeError, match=r"not httpx\.Limits: those are connection-pool limits"):
        build(limits=httpx.Limits(max_connections=10))


@pytest.mark.parametrize("field", ["max_flights", "max_waiters", "max_body_bytes", "window_bytes"])
@pytest.mark.parametrize("value", [1.5, "10", True, None])
def test_a_limit_that_is_no_int_is_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=rf"Limits\.{field} must be a positive int, not"):
        make_limits(**{field: value})


def test_an_opt_out_header_that_is_no_string_is_refused() -> None:
    with pytest.raises(TypeError, match=r"opt_out_header must be a header name \(str\), not NoneType"):
        build(opt_out_header=None)


# -- wrong values: ValueError ---------------------------------------------------------------


@pytest.mark.parametrize("window", [math.nan, math.inf, -math.inf, -1, -0.5])
def test_a_window_that_is_negative_or_not_finite_is_refused(window: float) -> None:
    with pytest.raises(ValueError, match=r"window must be a finite number of seconds >= 0, not"):
        build(window=window)


@pytest.mark.parametrize(
    "field",
    ["max_flights", "max_waiters", "max_body_bytes", "max_request_bytes", "window_entries", "window_bytes"],
)
@pytest.mark.parametrize("value", [0, -1])
def test_a_limit_below_one_is_refused_naming_the_field(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=rf"Limits\.{field} must be a positive int \(> 0\), not {value}"):
        make_limits(**{field: value})


@pytest.mark.parametrize("name", ["x coalesce", "x-coalesce:", "", "x-coalesce-é", "x\tcoalesce"])
def test_an_opt_out_header_that_is_no_token_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"opt_out_header must be a header name.*RFC 9110 token"):
        build(opt_out_header=name)


@pytest.mark.parametrize("name", ["Authorization", "x-api-key", "anthropic-beta"])
def test_a_credential_as_opt_out_header_is_refused_as_it_would_be_stripped(name: str) -> None:
    with pytest.raises(ValueError, match=r"opt_out_header must not be a credential header"):
        build(opt_out_header=name)


@pytest.mark.parametrize("method", ["", "GE T", "GET\r\n", "ÖPEN"])
def test_a_method_that_is_no_token_is_refused(method: str) -> None:
    with pytest.raises(ValueError, match=r"methods must hold method names.*got"):
        build(methods={"GET", method})


@pytest.mark.parametrize("name", ["", "x foo", "x-foo:", "x-trace\n"])
def test_an_ignored_header_that_is_no_header_name_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"each name in ignore_headers must be a header name"):
        build(ignore_headers={"x-ok", name})


def test_a_star_inside_an_ignored_header_name_is_refused_as_only_a_trailing_one_is_a_wildcard() -> None:
    with pytest.raises(ValueError, match=r"only a trailing '\*' is a wildcard.*'x-\*-id'"):
        build(ignore_headers={"x-*-id"})


# -- good arguments still construct ---------------------------------------------------------


@pytest.mark.parametrize("kind", [frozenset, list, tuple, set])
def test_methods_and_names_in_any_collection_construct(kind: Callable[[list[str]], Any]) -> None:
    transport = CoalescingTransport(
        methods=kind(["get", "POST"]),
        ignore_headers=kind(["x-trace", "x-stainless-*"]),
        ignore_json_fields=kind(["user"]),
    )
    assert transport._methods == {"GET", "POST"}


def test_the_documented_way_to_add_to_the_ignore_list_constructs_without_a_warning(
    recwarn: pytest.WarningsRecorder,
) -> None:
    CoalescingTransport(ignore_headers=DEFAULT_IGNORED_HEADERS | {"x-mine"})
    assert not recwarn.list


def test_every_option_given_right_constructs() -> None:
    CoalescingTransport(
        httpx.MockTransport(lambda request: httpx.Response(200)),
        methods=(),
        ignore_json_fields={"user"},
        key=lambda parts: parts.method,
        window=2,
        limits=Limits(max_flights=1, window_entries=1),
        opt_out_header="X-No-Coalesce",
    )


# -- a credential in the ignore list: warned about, and kept in the key ---------------------


@pytest.mark.parametrize(
    ("names", "named"),
    [
        ({"authorization"}, "'authorization'"),
        ({"X-Api-Key", "x-trace"}, "'X-Api-Key'"),
        ({"anthropic-*"}, "'anthropic-*'"),
        ({"x-*"}, "'x-*' (covers x-api-key, x-goog-api-key, x-api-*, x-goog-*)"),
    ],
)
def test_a_credential_in_the_ignore_list_is_warned_about_at_the_users_call(
    names: set[str], named: str
) -> None:
    with pytest.warns(UserWarning, match="always stay in the key") as warned:
        CoalescingTransport(ignore_headers=names)
    assert named in str(warned[0].message)
    # The warning points at the line that built the transport, not inside the library.
    assert warned[0].filename == __file__


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_credential_in_the_ignore_list_stays_in_the_key() -> None:
    release = anyio.Event()
    seen: list[str] = []

    async def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        await release.wait()
        return httpx.Response(200, json={"ok": True})

    with pytest.warns(UserWarning, match="'authorization'"):
        transport = CoalescingTransport(httpx.MockTransport(upstream), ignore_headers={"authorization"})
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        async with anyio.create_task_group() as group:
            for token in ("tenant-a", "tenant-b"):
                group.start_soon(partial(client.post, "/v1/chat", headers={"authorization": token}))
            # Both callers are seated, whether in one flight or two, before either answers.
            await until(lambda: transport.stats().waiters == 2)
            release.set()
    assert sorted(seen) == ["tenant-a", "tenant-b"]
    assert transport.stats().coalesced == 0


# -- the command line -----------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "httpx_coalesce", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_help_describes_the_commands_and_exits_zero() -> None:
    finished = run_cli("--help")
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith("usage: python -m httpx_coalesce")
    assert "demo" in finished.stdout
    assert "--version" in finished.stdout


def test_no_command_prints_help_on_stderr_and_exits_two() -> None:
    finished = run_cli()
    assert finished.returncode == 2
    assert finished.stderr.startswith("usage:")
    assert finished.stdout == ""


def test_version_prints_the_version() -> None:
    finished = run_cli("--version")
    assert finished.returncode == 0
    assert finished.stdout.strip() == f"python -m httpx_coalesce {__version__}"


def test_an_unknown_command_is_refused_with_exit_two() -> None:
    finished = run_cli("nope")
    assert finished.returncode == 2
    assert "invalid choice: 'nope'" in finished.stderr


def test_a_commands_help_is_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["demo", "--help"])
    assert exited.value.code == 0
    assert "--requests" in capsys.readouterr().out
