"""What a fleet leader hands Redis, write by write (unit tests: no Redis, no network).

The leader writes from a task of its own (``_Writer``): records queued while a write is
on its way go out together in the next one. These tests play the writes by hand.
"""

from __future__ import annotations

from httpx_coalesce._replay import Head
from httpx_coalesce.redis._lead import FLUSH_BYTES, Publication
from httpx_coalesce.redis._records import CHUNK, END, HEAD, TOO_LARGE, decode_chunk

HEAD_OF_A_STREAM = Head(200, ((b"content-type", b"text/event-stream"),), b"HTTP/1.1", b"OK")


def kinds(records: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [kind for kind, _ in records]


def test_chunks_queued_while_a_write_is_on_its_way_go_out_as_one_record() -> None:
    publication = Publication(max_body=10_000)
    assert publication.start(HEAD_OF_A_STREAM, buffered=False)
    assert publication.chunk(b"first")
    # A write carries the head and the first chunk; three chunks and the end come meanwhile.
    carried, final = publication.due()
    assert (kinds(carried), final) == ([HEAD, CHUNK], False)
    for data in (b"-second", b"-third", b"-fourth"):
        publication.chunk(data)
    publication.end()
    publication.wrote(0, len(carried), publication.generation)
    publication.merge_due()
    following, final = publication.due()
    assert (kinds(following), final) == ([CHUNK, END], True)
    assert decode_chunk(following[0][1]) == (5, b"-second-third-fourth")
    assert following[1] == (END, b"25")


def test_a_run_of_chunks_is_joined_into_records_of_at_most_flush_bytes() -> None:
    publication = Publication(max_body=10 * FLUSH_BYTES)
    publication.start(HEAD_OF_A_STREAM, buffered=False)
    piece = b"x" * (FLUSH_BYTES // 3 + 1)
    for _ in range(5):
        publication.chunk(piece)
    publication.merge_due()
    records, _ = publication.due()
    chunks = [decode_chunk(data) for kind, data in records if kind == CHUNK]
    assert [len(data) for _, data in chunks] == [2 * len(piece), 2 * len(piece), len(piece)]
    assert [offset for offset, _ in chunks] == [0, 2 * len(piece), 4 * len(piece)]


def test_passing_the_body_limit_while_a_write_carries_the_head_keeps_the_head() -> None:
    publication = Publication(max_body=100)
    publication.start(HEAD_OF_A_STREAM, buffered=False)
    carried, _ = publication.due()
    assert kinds(carried) == [HEAD]
    # Too large while the head is on its way: the head stays where the write put it, and
    # the round's next write is the final record alone.
    assert publication.chunk(b"x" * 101)
    publication.wrote(0, len(carried), publication.generation)
    records, final = publication.due()
    assert (records, final) == ([(TOO_LARGE, b"")], True)
