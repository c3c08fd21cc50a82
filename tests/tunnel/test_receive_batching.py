"""Body frames of one stream that arrive in one read reach its owner as one piece.

Unit tests of ``coalesce_data`` (order, ends, the size cap, other streams'
events), and two real sessions over a real WebSocket on 127.0.0.1
(``session_pair``): an upload framed in 32 KiB chunks arrives at the add-on's
side in a few large pieces, byte for byte.
"""

from __future__ import annotations

import asyncio

from session_pair import session_pair

from homeport.protocol import DataReceived, ResponseHead, ResponseReceived, StreamReset
from homeport.protocol.errors import ErrorCode
from homeport.protocol.heads import RequestHead
from homeport.tunnel.session import RECEIVE_BATCH, coalesce_data
from homeport.tunnel.stream import Stream

CHUNK = 32 * 1024


def _data(sid: int, fill: int, size: int = CHUNK, end: bool = False) -> DataReceived:
    return DataReceived(sid, bytes([fill]) * size, end)


def test_frames_of_one_stream_are_joined_in_order_with_their_end() -> None:
    head = ResponseReceived(1, ResponseHead(200), False)
    events = [head, _data(1, 1), _data(3, 9), _data(1, 2), _data(1, 3, end=True)]
    out = coalesce_data(events)
    assert out == [
        head,
        DataReceived(1, b"\x01" * CHUNK + b"\x02" * CHUNK + b"\x03" * CHUNK, True),
        _data(3, 9),
    ]


def test_nothing_is_joined_across_another_event_of_the_stream_or_past_its_end() -> None:
    reset = StreamReset(1, ErrorCode.CANCEL, "x", remote=True)
    events = [_data(1, 1), reset, _data(1, 2)]
    assert coalesce_data(events) == events  # (a peer cannot do this; the order stays anyway)
    ended = [_data(5, 1, end=True), _data(5, 2)]
    assert coalesce_data(ended) == ended


def test_pieces_stay_within_the_batch() -> None:
    count = 2 * RECEIVE_BATCH // CHUNK + 3
    out = coalesce_data([_data(1, n % 256) for n in range(count)])
    assert all(isinstance(e, DataReceived) for e in out)
    sizes = [len(e.data) for e in out if isinstance(e, DataReceived)]
    assert sizes == [RECEIVE_BATCH, RECEIVE_BATCH, 3 * CHUNK]
    joined = b"".join(e.data for e in out if isinstance(e, DataReceived))
    assert joined == b"".join(bytes([n % 256]) * CHUNK for n in range(count))


async def test_an_upload_reaches_the_addon_in_large_pieces() -> None:
    total = 4 * 1024 * 1024
    body = bytes(range(256)) * (total // 256)
    pieces: list[int] = []
    received = bytearray()

    async def handler(stream: Stream) -> None:
        while chunk := await stream.read():
            pieces.append(len(chunk))
            received.extend(chunk)
        stream.respond(ResponseHead(200), end=True)

    async with asyncio.timeout(60), session_pair(on_stream=handler) as pair:
        stream = pair.relay.open_stream(
            RequestHead("PUT", "/upload"), websocket=False, end_stream=False
        )
        await stream.write(body, end=True)
        head = await stream.response_head()
        assert head.status == 200
    assert bytes(received) == body
    # Framed in 32 KiB chunks (128 of them), taken in pieces of up to RECEIVE_BATCH.
    assert len(pieces) <= 2 * total // RECEIVE_BATCH, pieces
