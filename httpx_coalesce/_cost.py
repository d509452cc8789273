"""What sharing saved in dollars: shared LLM answers priced from genai-prices.

genai-prices (the ``cost`` extra) is Pydantic's maintained list of LLM API prices,
shipped as data inside the package: it reads an answer's usage for many providers and
applies its model's prices (cached tokens, tiers, prices by date). It makes no network
call unless the application starts its ``UpdatePrices`` on purpose; its prices move with
its releases (upgrade the package to get new ones).

What counts: each call that sharing made unnecessary saves that call's price, once. A
flight of N callers saves N - 1 calls (its followers' answers); a window hit saves one;
a flight answered by another process through the backend saves N (its leader made no
call either). The price of the one call made is never counted.

The lookup never runs on a caller's path. A flight's end may run on the event loop (an
asyncio pump task) or in a caller's own read of its stream, so pricing is handed to one
worker thread, by a queue that never blocks; its first job imports the price list
(about 0.2 s, once per process). Whatever goes wrong there (no extra, a model the list
does not know, a failure inside it) costs the answer its price, never a caller anything:
its tokens are counted on the path as before, by ``_usage``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from ._usage import Answer, read_answer

__all__ = ["Price", "Pricer", "price_list_version"]

logger = logging.getLogger("httpx_coalesce")

#: Answers waiting to be priced, at most: past that (the worker far behind), an answer
#: goes unpriced rather than hold memory or make anyone wait.
_BACKLOG = 1024
#: Prices of recent flights, by key, for the window hits that replay them.
_REMEMBERED = 1024


@dataclass(frozen=True, slots=True)
class Price:
    """One call's price: the price list's ids for its provider and model (both from a
    finite list, so bounded as metric attributes), and its cost in USD."""

    provider: str
    model: str
    usd: Decimal


class Pricer:
    """Prices one transport's shared answers in the worker thread.

    *record* gets (price, calls) for each priced answer, *unpriced* the calls of an
    answer with tokens but no price; both run in the worker.
    """

    def __init__(self, record: Callable[[Price, int], None], unpriced: Callable[[int], None]) -> None:
        self._record = record
        self._unpriced = unpriced
        # Only the worker touches it: no lock.
        self._remembered: OrderedDict[str, Price | None] = OrderedDict()

    def flight_saved(self, key: str, body: bytes, content_type: bytes, url: Any, calls: int) -> None:
        """A flight of *key* ended; *calls* of its answer (maybe 0, if only the window
        keeps it) were not made. *url*: the request's httpx URL."""
        when = datetime.now(timezone.utc)
        if not _submit(lambda: self._price_flight(key, body, content_type, url, calls, when)) and calls:
            self._unpriced(calls)

    def window_saved(self, key: str) -> None:
        """A window hit replayed the answer of *key*'s last flight: one call not made."""
        if not _submit(lambda: self._price_window_hit(key)):
            self._unpriced(1)

    def _price_flight(
        self, key: str, body: bytes, content_type: bytes, url: Any, calls: int, when: datetime
    ) -> None:
        try:
            price = price_of(read_answer(body, content_type), url, when)
        except Exception:
            # A price list that fails costs an answer its price, and nothing else.
            logger.debug("cost: pricing an answer failed", exc_info=True)
            price = None
        remembered = self._remembered
        remembered[key] = price
        remembered.move_to_end(key)
        if len(remembered) > _REMEMBERED:
            remembered.popitem(last=False)
        self._count(price, calls)

    def _price_window_hit(self, key: str) -> None:
        self._count(self._remembered.get(key), 1)

    def _count(self, price: Price | None, calls: int) -> None:
        if calls <= 0:
            return
        if price is None:
            self._unpriced(calls)
        else:
            self._record(price, calls)


def price_of(answer: Answer, url: Any, when: datetime) -> Price | None:
    """*answer*'s price as one call to *url* at *when*, or None if it has none."""
    if not answer.tokens.total and answer.document is None:
        return None
    prices = _price_list()
    if prices is None:
        return None
    # The provider is known by the API's address (``api.openai.com``...); a local
    # server, a gateway or a proxy is not, and the model's name finds it instead.
    where = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}" if url is not None else None
    path = url.path if url is not None else ""
    calculation = None
    if answer.document is not None and where is not None:
        # genai-prices' own reading, which knows more fields and providers than ours.
        for flavor in _flavors(path):
            try:
                extracted = prices.extract_usage(answer.document, provider_api_url=where, api_flavor=flavor)
                calculation = extracted.calc_price(genai_request_timestamp=when)
                break
            except Exception:
                # Not its provider or API (LookupError, ValueError), or a document it
                # cannot read: ours may still be priced.
                continue
    if calculation is None and answer.model is not None and answer.tokens.total:
        # A stream, or an address it does not know: our token counts, its prices.
        tokens = answer.tokens
        usage = prices.Usage(
            input_tokens=tokens.input + tokens.cached_input,
            cache_read_tokens=tokens.cached_input,
            output_tokens=tokens.output,
        )
        for provider_api_url in dict.fromkeys((where, None)):
            try:
                calculation = prices.calc_price(
                    usage, answer.model, provider_api_url=provider_api_url, genai_request_timestamp=when
                )
                break
            except LookupError:
                continue
    if calculation is None:
        return None
    return Price(calculation.provider.id, calculation.model.id, calculation.total_price)


def _flavors(path: str) -> tuple[str, ...]:
    """genai-prices' name for the API a path belongs to, first (OpenAI's has several)."""
    if path.endswith("/chat/completions"):
        return ("chat", "default")
    if path.endswith("/responses"):
        return ("responses", "default")
    if path.endswith("/embeddings"):
        return ("embeddings", "default")
    return ("default", "chat")


def price_list_version() -> str | None:
    """The installed genai-prices' version (its prices are its release's), or None."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("genai-prices")
    except PackageNotFoundError:
        return None


_prices: Any = None
_prices_missing = False


def _price_list() -> Any:
    """The genai_prices module, imported on first use (in the worker), or None."""
    global _prices, _prices_missing
    if _prices is None and not _prices_missing:
        try:
            import genai_prices
        except ImportError:
            _prices_missing = True
            logger.debug("genai-prices is not installed (the cost extra): answers are not priced")
            return None
        _prices = genai_prices
    return _prices


# -- the worker -------------------------------------------------------------------------
# One per process, for every transport: pricing is rare (shared LLM answers only) and
# cheap, and one thread keeps a window hit's job after the job of the flight it replays.

_jobs: queue.Queue[Callable[[], object]] = queue.Queue(maxsize=_BACKLOG)
_worker: threading.Thread | None = None
_worker_lock = threading.Lock()


def _submit(job: Callable[[], object]) -> bool:
    """Hand *job* to the worker; False if it is too far behind to take it."""
    if _worker is None:
        _start_worker()
    try:
        _jobs.put_nowait(job)
    except queue.Full:
        logger.debug("cost: %d answers waiting to be priced; this one is not", _BACKLOG)
        return False
    return True


def _start_worker() -> None:
    global _worker
    with _worker_lock:
        if _worker is None:
            worker = threading.Thread(target=_work, name="httpx-coalesce-pricer", daemon=True)
            worker.start()
            _worker = worker
            atexit.register(_stop_worker)


_stopping = threading.Event()


def _stop_worker() -> None:
    """At exit: let the job at hand end (the first imports the price list) before the
    interpreter tears modules down under it; the answers still waiting are not priced."""
    _stopping.set()
    worker = _worker
    if worker is None:
        return
    with contextlib.suppress(queue.Full):
        _jobs.put_nowait(_stopping.is_set)  # wakes a worker waiting on an empty queue
    worker.join(timeout=2.0)


def _work() -> None:
    while True:
        job = _jobs.get()
        if _stopping.is_set():
            return
        try:
            job()
        except Exception:
            # Jobs catch their own failures; this one is the worker's last guard.
            logger.debug("cost: a pricing job failed", exc_info=True)


def wait_priced(timeout: float) -> bool:
    """Wait until every answer handed over so far is priced (for tests and the demo)."""
    done = threading.Event()
    return _submit(done.set) and done.wait(timeout)
