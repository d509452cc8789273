"""How the cost tests wait for the pricer (the fake API is the shared one of tests/conftest.py)."""

from __future__ import annotations

from httpx_coalesce._cost import wait_priced


def priced() -> None:
    """Every answer handed to the pricer so far is priced."""
    assert wait_priced(10.0), "the pricer did not catch up"
