"""The flight and its replay as a state machine, without any network."""

from __future__ import annotations

import threading

import pytest

from httpx_coalesce import Limits
from httpx_coalesce._flight import END, Flight, FlightTable, Seat
from httpx_coalesce._replay import Head
from httpx_coalesce._signal import ThreadSignal
from httpx_coalesce._stats import Counters

HEAD = Head(
    status=200, headers=((b"content-type", b"text/event-stream"),), http_version=None, reason_phrase=None
)


def table(max_body_bytes: int = 1000) -> FlightTable:
    return FlightTable(Limits(max_body_bytes=max_body_bytes), Counters(), ThreadSignal, lambda flight: None)


def join(flights: FlightTable, key: str = "k") -> Seat:
    seat = flights.join(key)
    assert isinstance(seat, Seat)
    return seat


def read_all(seat: Seat) -> bytes:
    data = b""
    while True:
        with seat.flight.lock:
            chunk = seat.flight.next_data(seat)
        if chunk is END or chunk is None:
            return data
        assert isinstance(chunk, bytes)
        data += chunk


def test_a_late_joiner_reads_from_the_start_even_after_the_pump_checked_on_readers() -> None:
    flights = table()
    early = join(flights)
    flight = early.flight
    flight.publish(HEAD)
    for chunk in (b"a", b"b", b"c"):
        flight.append(chunk)
        with flight.lock:
            assert flight.pump_may_go_on() is True
    assert read_all(early) == b"abc"
    with flight.lock:
        flight.pump_may_go_on()
    late = join(flights)
    assert late.flight is flight
    assert read_all(late) == b"abc"


def test_past_the_limit_the_flight_takes_no_joiners_and_frees_what_all_readers_passed() -> None:
    flights = table(max_body_bytes=10)
    first, second = join(flights), join(flights)
    flight = first.flight
    flight.publish(HEAD)
    flight.append(b"0123456789")
    assert flight.joinable
    flight.append(b"abcdef")
    assert not flight.joinable
    assert flights.flights == {}
    assert join(flights).flight is not flight
    assert read_all(first) == b"0123456789abcdef"
    # The second reader has read nothing: everything is still held for it.
    assert flight.replay.retained == 16
    assert read_all(second) == b"0123456789abcdef"
    flight.append(b"g")
    assert flight.replay.retained == 1


def test_the_pump_waits_only_once_the_slowest_reader_is_a_limit_behind() -> None:
    flights = table(max_body_bytes=10)
    fast, slow = join(flights), join(flights)
    flight = fast.flight
    flight.publish(HEAD)
    flight.append(b"x" * 11)
    with flight.lock:
        assert flight.pump_may_go_on() is None
    read_all(fast)
    with flight.lock:
        assert flight.pump_may_go_on() is None
    read_all(slow)
    with flight.lock:
        assert flight.pump_may_go_on() is True


def test_a_complete_whole_body_is_one_bytes_object_for_every_reader() -> None:
    flights = table()
    seats = [join(flights) for _ in range(3)]
    flight = seats[0].flight
    flight.append(b"hello ")
    flight.append(b"world")
    flight.finish(HEAD)
    bodies = []
    for seat in seats:
        with flight.lock:
            bodies.append(flight.next_data(seat))
    assert bodies == [b"hello world"] * 3
    assert len({id(body) for body in bodies}) == 1


def test_the_last_caller_leaving_cancels_the_upstream_and_empties_the_table() -> None:
    flights = table()
    seats = [join(flights) for _ in range(3)]
    flight = seats[0].flight
    cancelled = threading.Event()
    assert flight.set_canceller(cancelled.set)
    for seat in seats[:2]:
        seat.leave()
    assert not cancelled.is_set()
    seats[2].leave()
    seats[2].leave()
    assert cancelled.is_set()
    assert flights.flights == {}
    assert flight.set_canceller(lambda: None) is False


def test_a_failed_flight_leaves_the_table_before_anyone_sees_the_error() -> None:
    flights = table()
    seat = join(flights)
    seat.flight.fail(ConnectionError("boom"))
    assert flights.flights == {}
    with seat.flight.lock:
        assert isinstance(seat.flight.outcome(), ConnectionError)


def test_an_abandoned_flight_tells_its_waiters_to_go_alone() -> None:
    from httpx_coalesce._flight import Abandoned

    flights = table()
    seat = join(flights)
    seat.flight.abandon()
    with seat.flight.lock:
        assert isinstance(seat.flight.outcome(), Abandoned)


def test_limits_on_flights_and_waiters_give_a_reason_to_pass_through() -> None:
    flights = FlightTable(Limits(max_flights=1, max_waiters=2), Counters(), ThreadSignal, lambda flight: None)
    join(flights, "a")
    join(flights, "a")
    assert flights.join("a") == "max_waiters"
    assert flights.join("b") == "max_flights"


def test_reading_a_released_position_fails_loudly() -> None:
    from httpx_coalesce._replay import Replay

    replay = Replay()
    replay.append(b"a")
    replay.append(b"b")
    replay.release_before(1)
    with pytest.raises(AssertionError):
        replay.read(0)


def test_flight_repr_shows_a_hashed_key_prefix_only() -> None:
    flights = table()
    seat = join(flights, "0123456789abcdef" * 2)
    assert "0123456789ab" in repr(seat.flight)
    assert isinstance(seat.flight, Flight)


def test_lagging_readers_share_one_joined_batch_instead_of_a_copy_each() -> None:
    from httpx_coalesce._replay import Replay

    replay = Replay()
    chunks = [bytes([65 + n % 26]) * 10 for n in range(40)]
    for chunk in chunks:
        replay.append(chunk)
    first, after_first = replay.read(0)
    second, after_second = replay.read(0)
    assert first is second  # one join, however many readers take it
    assert (first, after_first) == (b"".join(chunks[:16]), 16)
    assert after_second == 16
    # Off a batch boundary a reader takes shared chunks one by one until it is on one.
    data, position = replay.read(5)
    assert data is chunks[5]
    assert position == 6
    pieces = [data]
    while position < replay.end:
        data, position = replay.read(position)
        pieces.append(data)
    assert b"".join(pieces) == b"".join(chunks[5:])
    assert replay.retained == 40 * 10 + 2 * 160  # the chunks, and the two batches joined
    replay.release_before(32)
    assert replay.retained == 8 * 10  # freed batches count as freed bytes


def test_a_batch_too_big_to_join_goes_chunk_by_chunk() -> None:
    from httpx_coalesce._replay import Replay

    replay = Replay()
    big = [b"x" * 8192 for _ in range(16)]
    for chunk in big:
        replay.append(chunk)
    data, position = replay.read(0)
    assert data is big[0]
    assert position == 1
