"""OpenTelemetry: the transport's metrics, and what it notes on the caller's span.

The only module that knows OpenTelemetry, and it needs only ``opentelemetry-api`` (the
``otel`` extra). ``Counters`` calls it from the very calls that feed ``stats()``, so the
two views cannot drift apart.

Cost is the point of the design. With no OpenTelemetry, or none configured, the
transport's hot path pays one ``None`` check per recording site:
``Counters.recorder.telemetry`` is None until a real MeterProvider is known. The global
provider is the hard case: the API hands out a proxy until the application calls
``set_meter_provider``, maybe after the transport was built. Recording through the
proxy would cost the attributes and calls of every measurement for nothing, and
``get_meter_provider()`` itself costs about a microsecond (it reads ``os.environ`` on
every call), so until a provider is set a probe (``recorder.probe``) reads the API's
own global once per request, and swaps the live instruments in as soon as it is set.

With a provider, what every request moves (``requests``, ``upstream_calls``) is kept
here as totals by attribute values and observed at collection, as are
``flights.active`` and ``waiters.active`` (from the figures ``stats()`` reads): an SDK's
synchronous ``add`` costs 2.5-5 µs. Rarer events (a flight shared, bytes, tokens and
cost saved, a backend error) are recorded as they happen.

Telemetry never fails a request: every call into OpenTelemetry made on a request's way
(a broken provider, context or span, an SDK test that forbids the calls) is guarded, and
what it raises is logged once (``_failed``) and dropped. ``CoalescingTransport(
telemetry=False)`` makes no call into OpenTelemetry at all: ``connect`` is never called,
and the recorder stays empty.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
    from opentelemetry.metrics import _internal as otel_metrics_state
except ImportError:  # the otel extra is not installed: nothing is recorded
    otel_metrics = None  # type: ignore[assignment]
    otel_trace = None  # type: ignore[assignment]
    otel_metrics_state = None  # type: ignore[assignment]

__all__ = [
    "INSTRUMENTS",
    "Telemetry",
    "available",
    "connect",
    "error_type",
    "is_meter_provider",
    "span_noter",
]

METER_NAME = "httpx_coalesce"

logger = logging.getLogger("httpx_coalesce")

# Attribute names: OpenTelemetry's semantic conventions where one exists.
OUTCOME = "httpx_coalesce.outcome"
BYPASS_REASON = "httpx_coalesce.bypass_reason"
FLIGHT_ID = "httpx_coalesce.flight_id"
CALLERS = "httpx_coalesce.callers"
METHOD = "http.request.method"
SERVER = "server.address"
TOKEN_TYPE = "gen_ai.token.type"
PROVIDER = "gen_ai.provider.name"
MODEL = "gen_ai.request.model"
ERROR_TYPE = "error.type"

#: The instruments: name, kind, unit, description. Their names are the public contract.
INSTRUMENTS: tuple[tuple[str, str, str, str], ...] = (
    ("httpx_coalesce.requests", "counter", "{request}", "Requests the transport handled, by outcome."),
    (
        "httpx_coalesce.upstream_calls",
        "counter",
        "{request}",
        "Requests that reached the inner transport, pass-through included.",
    ),
    (
        "httpx_coalesce.flight.callers",
        "histogram",
        "{request}",
        "Callers that shared one flight, for each flight shared by two or more.",
    ),
    ("httpx_coalesce.flights.active", "up-down counter", "{flight}", "Flights in flight now."),
    ("httpx_coalesce.waiters.active", "up-down counter", "{request}", "Callers attached to a flight now."),
    ("httpx_coalesce.bytes_saved", "counter", "By", "Response bytes not fetched again."),
    ("httpx_coalesce.tokens_saved", "counter", "{token}", "LLM tokens not paid for again (an estimate)."),
    (
        "httpx_coalesce.cost_saved",
        "counter",
        "USD",
        "Estimated list price of the LLM calls sharing made unnecessary (genai-prices).",
    ),
    ("httpx_coalesce.backend.errors", "counter", "{error}", "Backend failures that fell back to local."),
)
_SPEC = {name: (unit, description) for name, _, unit, description in INSTRUMENTS}
# Callers of one shared flight: two is the common case, and a bucket of its own.
_CALLER_BUCKETS = (2, 3, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10_000)


_failures_logged = False


def _failed(what: str) -> None:
    """Log (with its traceback, the first time only) that an OpenTelemetry call failed.

    Called from an ``except`` block. Once only: a broken provider fails on every
    request, and a log line per request would bury the application's own.
    """
    global _failures_logged
    if _failures_logged:
        logger.debug("OpenTelemetry failed %s; the request went on without it", what, exc_info=True)
        return
    _failures_logged = True
    logger.warning(
        "OpenTelemetry failed %s; requests go on without it (logged once; telemetry=False turns it off)",
        what,
        exc_info=True,
    )


def available() -> bool:
    """Whether ``opentelemetry-api`` is installed."""
    return otel_metrics is not None


def is_meter_provider(value: object) -> bool:
    return otel_metrics is not None and isinstance(value, otel_metrics.MeterProvider)


class Telemetry:
    """The instruments of one MeterProvider, shared by every transport recording there
    (an SDK keeps the first instrument of a name; a second transport must not make its
    own)."""

    def __init__(self, provider: MeterProvider) -> None:
        from . import __version__

        meter = provider.get_meter(METER_NAME, __version__)
        self._lock = threading.Lock()
        # The two counters every request moves are kept here and observed at collection:
        # an SDK counter's add costs 2.5-5 µs (attributes hashed, a lock, an exemplar
        # check), which on every request would cost more than the 5 % this is allowed;
        # a dict entry costs a tenth of that. By attribute values, for every transport
        # on this provider, so a transport that goes away takes nothing back.
        self._requests: dict[tuple[str, str | None, str, str], int] = {}
        self._upstream: dict[tuple[str, str], int] = {}
        meter.create_observable_counter(
            "httpx_coalesce.requests", [self._observe_requests], *_SPEC["httpx_coalesce.requests"]
        )
        meter.create_observable_counter(
            "httpx_coalesce.upstream_calls", [self._observe_upstream], *_SPEC["httpx_coalesce.upstream_calls"]
        )
        self._callers = meter.create_histogram(
            "httpx_coalesce.flight.callers",
            *_SPEC["httpx_coalesce.flight.callers"],
            explicit_bucket_boundaries_advisory=_CALLER_BUCKETS,
        )
        self._bytes = meter.create_counter("httpx_coalesce.bytes_saved", *_SPEC["httpx_coalesce.bytes_saved"])
        self._tokens = meter.create_counter(
            "httpx_coalesce.tokens_saved", *_SPEC["httpx_coalesce.tokens_saved"]
        )
        self._cost = meter.create_counter("httpx_coalesce.cost_saved", *_SPEC["httpx_coalesce.cost_saved"])
        self._errors = meter.create_counter(
            "httpx_coalesce.backend.errors", *_SPEC["httpx_coalesce.backend.errors"]
        )
        # Whose flights the observed instruments count: each transport, held weakly, with
        # the function that reads its (flights, waiters).
        self._sources: weakref.WeakKeyDictionary[object, Callable[[Any], tuple[int, int]]] = (
            weakref.WeakKeyDictionary()
        )
        meter.create_observable_up_down_counter(
            "httpx_coalesce.flights.active",
            [lambda options: self._observe(options, 0)],
            *_SPEC["httpx_coalesce.flights.active"],
        )
        meter.create_observable_up_down_counter(
            "httpx_coalesce.waiters.active",
            [lambda options: self._observe(options, 1)],
            *_SPEC["httpx_coalesce.waiters.active"],
        )

    def watch(self, owner: object, load: Callable[[Any], tuple[int, int]]) -> Telemetry:
        """Count *owner*'s flights in the observed instruments (``load(owner)``)."""
        with self._lock:
            self._sources[owner] = load
        return self

    def _observe(self, options: CallbackOptions, index: int) -> Iterable[Observation]:
        with self._lock:
            sources = list(self._sources.items())
        value = sum(load(owner)[index] for owner, load in sources)
        return [otel_metrics.Observation(value)]

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._requests.items())
        observations = []
        for (outcome, reason, method, host), count in counts:
            attributes = {OUTCOME: outcome, METHOD: method, SERVER: host}
            if reason is not None:
                attributes[BYPASS_REASON] = reason
            observations.append(otel_metrics.Observation(count, attributes))
        return observations

    def _observe_upstream(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            counts = list(self._upstream.items())
        return [
            otel_metrics.Observation(count, {METHOD: method, SERVER: host})
            for (method, host), count in counts
        ]

    # -- what Counters records ----------------------------------------------------------

    def request(self, outcome: str, reason: str | None, request: Any) -> None:
        # The host only: never the port's userinfo, the path or the query string.
        key = (outcome, reason, request.method, request.url.host)
        with self._lock:
            counts = self._requests
            counts[key] = counts.get(key, 0) + 1

    def upstream(self, request: Any) -> None:
        key = (request.method, request.url.host)
        with self._lock:
            counts = self._upstream
            counts[key] = counts.get(key, 0) + 1

    # The instruments below are the provider's: each call is guarded (see the module).

    def flight_ended(self, callers: int) -> None:
        try:
            self._callers.record(callers)
        except Exception:
            _failed("recording flight.callers")

    def bytes_saved(self, amount: int) -> None:
        try:
            self._bytes.add(amount)
        except Exception:
            _failed("recording bytes_saved")

    def tokens_saved(self, by_type: Mapping[str, int]) -> None:
        """*by_type*: ``Tokens.by_type()``, non-zero counts by ``gen_ai.token.type``."""
        try:
            for kind, count in by_type.items():
                self._tokens.add(count, {TOKEN_TYPE: kind})
        except Exception:
            _failed("recording tokens_saved")

    def cost_saved(self, usd: Decimal, provider: str, model: str) -> None:
        """*provider* and *model*: the price list's ids, a finite set (never the raw
        model name an answer gave, which could be anything)."""
        try:
            self._cost.add(float(usd), {PROVIDER: provider, MODEL: model})
        except Exception:
            _failed("recording cost_saved")

    def backend_error(self, kind: str) -> None:
        try:
            self._errors.add(1, {ERROR_TYPE: kind})
        except Exception:
            _failed("recording backend.errors")


# One Telemetry per provider; weakly, so a provider a test drops is not kept alive.
_by_provider: weakref.WeakKeyDictionary[object, Telemetry] = weakref.WeakKeyDictionary()
_by_provider_lock = threading.Lock()


def _telemetry_of(provider: MeterProvider) -> Telemetry:
    with _by_provider_lock:
        telemetry = _by_provider.get(provider)
        if telemetry is None:
            telemetry = _by_provider[provider] = Telemetry(provider)
        return telemetry


def _records(provider: MeterProvider) -> bool:
    """Whether *provider* records anything (the API's no-op provider does not)."""
    return not isinstance(provider, otel_metrics.NoOpMeterProvider)


def _global_provider() -> MeterProvider | None:
    """The global MeterProvider once one is set, else None.

    The API keeps it in a module variable; ``get_meter_provider()`` would return a
    proxy until then, at a microsecond a call.
    """
    provider: MeterProvider | None = getattr(otel_metrics_state, "_METER_PROVIDER", None)
    return provider


class Recorder:
    """What ``Counters`` needs to know: where to record, how to find out later, and how
    to note a request on its caller's span. All None until ``connect``, and for good
    without OpenTelemetry or with ``telemetry=False``.

    ``probe``, while OpenTelemetry is here but no global MeterProvider is set yet,
    returns that provider once it is set: then ``found()`` records there from then on.
    """

    __slots__ = ("found", "note_span", "probe", "telemetry")

    def __init__(self) -> None:
        self.telemetry: Telemetry | None = None
        self.probe: Callable[[], object] | None = None
        self.found: Callable[[], None] = _nothing
        self.note_span: Callable[[str, str | None, str | None, int], None] | None = None


def _nothing() -> None:
    return None


def _record_in(
    recorder: Recorder, provider: MeterProvider, owner: object, load: Callable[[Any], tuple[int, int]]
) -> None:
    """Point *recorder* at *provider*'s instruments, unless it records nothing."""
    if _records(provider):
        recorder.telemetry = _telemetry_of(provider).watch(owner, load)


def connect(
    recorder: Recorder,
    meter_provider: MeterProvider | None,
    owner: object,
    load: Callable[[Any], tuple[int, int]],
) -> None:
    """Set *recorder* up for *meter_provider*, or for the global provider if None, and
    for span notes.

    *owner*'s flights (``load(owner)``) are what the observed instruments count. A
    failure leaves the metrics off (logged once): the transport works without them.
    """
    if otel_metrics is None:
        return
    try:
        recorder.note_span = span_noter()
        _connect_metrics(recorder, meter_provider, owner, load)
    except Exception:
        recorder.telemetry = recorder.probe = None
        _failed("setting up")


def _connect_metrics(
    recorder: Recorder,
    meter_provider: MeterProvider | None,
    owner: object,
    load: Callable[[Any], tuple[int, int]],
) -> None:
    if meter_provider is not None:
        _record_in(recorder, meter_provider, owner, load)
        return
    # Resolves OTEL_PYTHON_METER_PROVIDER from the environment, once, if it is set there.
    otel_metrics.get_meter_provider()
    provider = _global_provider()
    if provider is not None:
        _record_in(recorder, provider, owner, load)
        return
    if not hasattr(otel_metrics_state, "_METER_PROVIDER"):
        # A future API without that variable: resolve now, through the public call.
        provider = otel_metrics.get_meter_provider()
        recorder.telemetry = _telemetry_of(provider).watch(owner, load)
        return
    owner_ref = weakref.ref(owner)
    state = otel_metrics_state

    def found() -> None:
        provider: MeterProvider | None = state._METER_PROVIDER
        recorder.probe = None
        target = owner_ref()
        if provider is not None and target is not None:
            try:
                _record_in(recorder, provider, target, load)
            except Exception:
                _failed("setting up metrics on the global MeterProvider")

    # Read per request: a call in C, not a Python function's frame.
    recorder.probe = partial(getattr, state, "_METER_PROVIDER")
    recorder.found = found


# -- traces --------------------------------------------------------------------------------


def span_noter() -> Callable[[str, str | None, str | None, int], None] | None:
    """How to note a request's outcome on the caller's current span; None without the API."""
    if otel_trace is None:
        return None
    get_current_span = otel_trace.get_current_span
    client = otel_trace.SpanKind.CLIENT
    no_span = _no_span_test()

    def note(outcome: str, reason: str | None, flight_id: str | None, callers: int) -> None:
        try:
            if no_span is not None and no_span():
                return  # no span to note on (the usual case without tracing)
            span = get_current_span()
            if not span.is_recording():
                return
            attributes: dict[str, str | int] = {OUTCOME: outcome}
            if reason is not None:
                attributes[BYPASS_REASON] = reason
            if flight_id is not None:
                attributes[FLIGHT_ID] = flight_id
            if callers:
                attributes[CALLERS] = callers
            # A client span is this request's own (httpx's instrumentation, an SDK's): its
            # attributes say how it was answered. Any other span (a server's request span,
            # the application's own) may cover many requests, each overwriting the last:
            # there it is an event per request.
            if getattr(span, "kind", client) is client:
                span.set_attributes(attributes)
            else:
                span.add_event("httpx_coalesce.request", attributes)
        except Exception:
            _failed("noting a request on its span")

    return note


def _no_span_test() -> Callable[[], bool] | None:
    """A test that the current context holds no span at all: in one call, where
    ``get_current_span()`` takes four to say so (with its ``INVALID_SPAN``, never
    recording). Only for the API's own context (contextvars) as this version of it
    keeps it; None (ask the API) for anything else.
    """
    try:
        from opentelemetry import context as otel_context
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
        from opentelemetry.trace.propagation import _SPAN_KEY
    except ImportError:
        return None
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    current = getattr(runtime, "_current_context", None)
    if type(runtime) is not ContextVarsRuntimeContext or not isinstance(current, contextvars.ContextVar):
        return None

    def no_span() -> bool:
        # Another runtime context swapped in since: ask the API.
        if otel_context._RUNTIME_CONTEXT is not runtime:
            return False
        return current.get().get(_SPAN_KEY) is None

    return no_span


def error_type(error: BaseException) -> str:
    """``error.type`` for a backend failure: the class of its cause (a Redis client's
    ``ConnectionError``, ``TimeoutError``), fully qualified, never its message."""
    cause = error.__cause__
    if cause is None:
        return type(error).__name__
    kind = type(cause)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"
