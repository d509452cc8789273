"""The flight and its replay as a state machine, without any network."""

from __future__ import annotations

import threading

import pytest

from httpx_coalesce import Limits
from httpx_coalesce._flight import END, Abandoned, Flight, FlightTable, Seat
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


def test_a_late_joiner_reads_from_the_start_after_an_early_reader_passed_it() -> None:
    flights = table()
    early = join(flights)
    flight = early.flight
    flight.publish(HEAD)
    for chunk in (b"a", b"b", b"c"):
        flight.append(chunk)
    assert read_all(early) == b"abc"
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
    # The second reader has read nothing: what memory cannot hold went to the spool.
    assert flight.replay.retained == 6
    assert flight.replay.spool is not None
    assert flight.replay.spool.disk == 10
    assert read_all(second) == b"0123456789abcdef"
    flight.append(b"g")
    assert flight.replay.retained == 1
    assert flight.replay.spool.disk == 0  # every reader passed it: its file is closed


def test_the_pump_pulls_only_when_a_reader_waits_at_the_live_edge() -> None:
    flights = table()
    seat = join(flights)
    flight = seat.flight
    flight.publish(HEAD)
    with flight.lock:
        assert flight.pull_wanted() is None  # nobody asked yet: the upstream is not read
        assert flight.next_data(seat) is None
        assert flight.pull_wanted() is True
    flight.append(b"a")
    with flight.lock:
        assert flight.pull_wanted() is None
        assert flight.next_data(seat) == b"a"
        assert flight.pull_wanted() is None
    seat.leave()
    with flight.lock:
        assert flight.pull_wanted() is False  # every reader left: the pump stops


def test_a_stalled_reader_never_holds_the_pump_its_part_goes_to_the_spool() -> None:
    flights = table(max_body_bytes=10)
    fast, slow = join(flights), join(flights)
    flight = fast.flight
    flight.publish(HEAD)
    sent = b""
    for n in range(20):
        chunk = bytes([65 + n]) * 4
        flight.append(chunk)
        sent += chunk
        assert read_all(fast) == chunk
    assert flight.replay.retained <= 10
    assert read_all(slow) == sent
    slow.leave()
    fast.leave()
    assert flight.replay.spool is not None
    assert flight.replay.spool.files() == 0


def test_a_reader_past_the_spool_bound_is_let_go_and_the_others_go_on() -> None:
    flights = FlightTable(
        Limits(max_body_bytes=8, max_spool_bytes=16), Counters(), ThreadSignal, lambda flight: None
    )
    fast, slow = join(flights), join(flights)
    flight = fast.flight
    flight.publish(HEAD)
    for n in range(10):
        flight.append(bytes([65 + n]) * 4)
        read_all(fast)
    with flight.lock:
        error = flight.next_data(slow)
    assert isinstance(error, Abandoned)
    assert "max_spool_bytes" in str(error)
    assert flight.replay.spool is not None
    assert flight.replay.spool.disk == 0


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


def test_lagging_readers_share_one_joined_rest_and_readers_at_the_edge_get_the_chunk() -> None:
    from httpx_coalesce._replay import Replay

    replay = Replay()
    chunks = [bytes([65 + n % 26]) * 10 for n in range(40)]
    for chunk in chunks:
        replay.append(chunk)
    first, after_first = replay.read(0)
    second, after_second = replay.read(0)
    assert first is second  # one join, however many readers take it
    assert (first, after_first) == (b"".join(chunks), 40)
    assert after_second == 40
    data, position = replay.read(39)
    assert data is chunks[39]  # at the live edge: the upstream's own chunk
    assert position == 40
    assert replay.retained == 2 * 40 * 10  # the chunks, and the rest joined once
    replay.release_before(32)
    assert replay.retained == 8 * 10  # freed rests count as freed bytes


def test_a_rest_too_big_for_the_budget_goes_chunk_by_chunk() -> None:
    from httpx_coalesce._replay import Replay

    replay = Replay(budget=100)
    big = [b"x" * 30 for _ in range(3)]
    for chunk in big:
        replay.append(chunk)
    data, position = replay.read(0)
    assert data is big[0]
    assert position == 1


def test_a_late_reader_and_a_lagging_reader_get_the_very_same_body_object() -> None:
    flights = table()
    leader, lagging = join(flights), join(flights)
    flight = leader.flight
    flight.publish(Head(200, ((b"content-length", b"6"),), None, None), shares_whole=True)
    with flight.lock:
        flight.start_reading(leader, reads_whole=False)
        flight.start_reading(lagging, reads_whole=True)  # read(): it waits for the whole
        assert flight.next_data(lagging) is None
    flight.append(b"abc")
    flight.append(b"def")
    flight.finish(HEAD)
    late = join(flights) if flights.flights else Seat(flight, leader=False)
    with flight.lock:
        from_lagging = flight.next_data(lagging)
        from_late = flight.next_data(late)
    assert from_lagging == b"abcdef"
    assert from_lagging is from_late


def test_a_reader_iterating_from_mid_body_gets_what_came_as_one_object_then_each_chunk() -> None:
    flights = table()
    leader, late = join(flights), join(flights)
    flight = leader.flight
    flight.publish(Head(200, ((b"content-length", b"9"),), None, None), shares_whole=True)
    flight.append(b"abc")
    flight.append(b"def")
    with flight.lock:
        flight.start_reading(late, reads_whole=False)  # it iterates: it reads live
        assert flight.next_data(late) == b"abcdef"
        assert flight.next_data(late) is None  # at the live edge: it waits for the next
    flight.append(b"ghi")
    with flight.lock:
        assert flight.next_data(late) == b"ghi"
