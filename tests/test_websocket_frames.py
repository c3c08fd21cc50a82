"""The common RFC 6455 data frame read and written as the ``websockets`` library does."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from homeport.websocket_frames import (
    MASK_POOL_SIZE,
    FrameBoundary,
    data_frame,
    mask_key,
    whole_data_frame,
)


def library_frame(opcode: Opcode, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin).serialize(mask=mask, extensions=[])


def library_parse(data: bytes, *, mask: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=mask, max_size=None, extensions=[])
    try:
        next(parser)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    raise AssertionError("the library wanted more bytes")


SIZES = [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mask", [True, False])
def test_written_frames_read_back_by_the_library(size: int, mask: bool) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    for text, opcode in ((False, Opcode.BINARY), (True, Opcode.TEXT)):
        data = b"a" * size if text else payload
        wire = b"".join(data_frame(data, text=text, mask=mask))
        frame = library_parse(wire, mask=mask)
        assert (frame.opcode, frame.fin, frame.data) == (opcode, True, data)
        if not mask:  # nothing random in it: exactly the library's bytes
            assert wire == library_frame(opcode, data, mask=False)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("masked", [True, False])
def test_whole_frames_written_by_the_library_are_read(size: int, masked: bool) -> None:
    text = ("\u00e9" * size).encode()[:size] if size % 2 == 0 else b"x" * size
    binary = (bytes(range(256)) * (size // 256 + 1))[:size]
    for opcode, payload, is_text in ((Opcode.TEXT, text, True), (Opcode.BINARY, binary, False)):
        found = whole_data_frame(
            library_frame(opcode, payload, mask=masked), masked=masked, limit=None
        )
        if size >= 65536:
            assert found is None  # 64-bit lengths are left to the library
        else:
            assert found == (is_text, payload)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(library_frame(Opcode.TEXT, b"hi", mask=False), id="wrong-mask-bit"),
        pytest.param(library_frame(Opcode.TEXT, b"hi", mask=True, fin=False), id="not-fin"),
        pytest.param(library_frame(Opcode.CONT, b"hi", mask=True), id="continuation"),
        pytest.param(library_frame(Opcode.PING, b"hi", mask=True), id="ping"),
        pytest.param(library_frame(Opcode.CLOSE, b"\x03\xe8", mask=True), id="close"),
        pytest.param(library_frame(Opcode.TEXT, b"\xff", mask=True), id="bad-utf-8"),
        pytest.param(library_frame(Opcode.TEXT, b"hi", mask=True)[:-1], id="cut-short"),
        pytest.param(library_frame(Opcode.TEXT, b"hi", mask=True) + b"\x81", id="more-after"),
        pytest.param(bytes([0xC1]) + library_frame(Opcode.TEXT, b"hi", mask=True)[1:], id="rsv1"),
        pytest.param(library_frame(Opcode.BINARY, b"x" * 11, mask=True), id="over-the-limit"),
        pytest.param(b"\x81", id="one-byte"),
        pytest.param(b"", id="empty"),
    ],
)
def test_anything_else_is_left_to_the_library(data: bytes) -> None:
    assert whole_data_frame(data, masked=True, limit=10) is None


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 3, 125, 126, 300, 65536]), min_size=1, max_size=5),
    masks=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=70_000), max_size=6),
)
def test_the_boundary_follows_the_library_wherever_reads_cut(
    sizes: list[int], masks: bool, cuts: list[int]
) -> None:
    frames = [library_frame(Opcode.BINARY, b"z" * n, mask=masks) for n in sizes]
    stream = b"".join(frames)
    starts = {0}
    for frame in frames:
        starts.add(max(starts) + len(frame))
    points = sorted({c % (len(stream) + 1) for c in cuts} | {len(stream)})
    boundary = FrameBoundary()
    position = 0
    for point in points:
        boundary.track(stream[position:point])
        position = point
        assert boundary.at_start is (position in starts)


def test_mask_keys_are_never_reused_across_pool_refills() -> None:
    """Every frame gets its own key, also across the refills of the pool (RFC 6455 §5.3)."""
    keys = [mask_key() for _ in range(3 * MASK_POOL_SIZE // 4 + 5)]
    assert all(len(key) == 4 for key in keys)
    # 4-byte keys from the CSPRNG: a repeat among ~3,000 would be a bug, not chance
    # (about 1 in 10^3 for any repeat at all; the pool's slicing repeating is certain).
    assert len(set(keys)) >= len(keys) - 2
    assert len({keys[i] for i in range(0, len(keys), MASK_POOL_SIZE // 4)}) > 1


def test_masked_frames_carry_a_fresh_key_each() -> None:
    wires = [b"".join(data_frame(b"same payload", text=True, mask=True)) for _ in range(64)]
    assert len({wire[2:6] for wire in wires}) >= 63
    for wire in wires:
        assert library_parse(wire, mask=True).data == b"same payload"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_reuse_its_parents_keys() -> None:
    """A child that kept its parent's pool would mask with the same keys as the parent."""
    mask_key()  # the parent has a pool in use
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, b"".join(mask_key() for _ in range(8)))
        os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    parent = b"".join(mask_key() for _ in range(8))
    assert len(child) == 32
    assert child != parent
