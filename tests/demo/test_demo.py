"""The demo: the same burst with and without coalescing, against a fake API that rate-limits and bills."""

from __future__ import annotations

import importlib.metadata

import anyio
import pytest

from httpx_coalesce._demo import demo
from httpx_coalesce._demo.demo import Settings, run

# Four requests in each half-second slice: of a burst of eight, some are refused and retried, and the
# retries land in the next slice (the SDK honours retry-after), so the plain run finishes in about 0.5 s.
SETTINGS = Settings(
    requests=8, latency=0.01, requests_per_minute=480, answer_tokens=5, max_retries=5, slice_seconds=0.5
)


def test_the_burst_without_coalescing_is_rate_limited_and_billed_per_caller() -> None:
    rows = anyio.run(run, SETTINGS)

    for plain, ours in (rows[0], rows[1]), (rows[2], rows[3]):
        assert (plain.client, ours.client) == ("plain httpx2", "CoalescingTransport")
        assert plain.failed == ours.failed == 0
        # Every caller was answered once, and each refusal cost one more upstream call.
        assert plain.rate_limited >= 1
        assert plain.upstream_calls == SETTINGS.requests + plain.rate_limited
        assert (ours.upstream_calls, ours.rate_limited) == (1, 0)
        # One answer billed instead of one per caller.
        assert ours.tokens > 0
        assert plain.tokens == SETTINGS.requests * ours.tokens
        assert plain.cost == pytest.approx(SETTINGS.requests * ours.cost)
        # The transport's own estimate: the calls it saved, at the list price the API billed.
        assert plain.cost_saved is None
        assert float(ours.cost_saved or 0) == pytest.approx(plain.cost - ours.cost)
        assert plain.answers == ours.answers
        assert len(ours.answers) == 1
    assert [row.mode for row in rows] == ["buffered JSON"] * 2 + ["streamed (SSE)"] * 2


def test_the_demo_prints_the_table_and_the_real_list_prices_it_bills_at(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert demo.main(["--requests", "3", "--latency", "0", "--rpm", "6000"]) == 0

    out = capsys.readouterr().out
    assert "| upstream calls |" in out
    assert "429s" in out
    assert "est. cost" in out
    assert f"at OpenAI's list prices for '{demo.MODEL}'" in out
    price = demo.list_price()
    assert f"${price.input_per_million:.2f} per million input tokens" in out
    assert f"genai-prices {importlib.metadata.version('genai-prices')}" in out
    assert "stats().cost_saved" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--requests", "0"], "--requests: must be at least 1, got 0"),
        (["--requests", "-3"], "--requests: must be at least 1, got -3"),
        (["--requests", "many"], "--requests: expected a whole number"),
        (["--latency", "-0.5"], "--latency: must be a finite number of seconds, 0 or more"),
        (["--latency", "nan"], "--latency: must be a finite number of seconds, 0 or more"),
        (["--rpm", "0"], "--rpm: must be at least 1, got 0"),
        (["--max-retries", "-1"], "--max-retries: must be 0 or more"),
    ],
)
def test_the_demo_refuses_counts_below_one_and_negative_latencies(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        demo.main(argv)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
