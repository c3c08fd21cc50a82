"""The common RFC 6455 data frame, read and written without the library's parser.

Both ends of a proxied WebSocket run the ``websockets`` library's sans-I/O
``Protocol``: the relay as the browser's server, the add-on as Home
Assistant's client.  Nearly every read on either is one whole, unfragmented
text or binary frame, and nearly every write one such frame; for those the
library's generator-based parser and its ``Frame`` objects cost more than the
frame.  This module reads and writes exactly that shape, with exactly the
library's checks, and says "not mine" (``None``) for anything else, which
then goes through the library as before: fragments, control frames, several
frames or part of one in a read, 64-bit lengths, and every error.

:class:`FrameBoundary` keeps the shortcut honest: it follows, by frame
headers alone, where the library's parser is in the byte stream, so the
shortcut only ever reads a frame that starts where the library would start
reading one.  No extension is ever negotiated on either side (both refuse
them), so no RSV bit may be set.
"""

from __future__ import annotations

import os
import struct
import threading

try:  # the library's own masking, in C where built (as websockets.frames picks it)
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover
    from websockets.utils import apply_mask

__all__ = ["FrameBoundary", "data_frame", "frame_size", "whole_data_frame"]

_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
_TEXT_FIN = 0x81
_BINARY_FIN = 0x82
_MASK_BIT = 0x80


def whole_data_frame(data: bytes, *, masked: bool, limit: int | None) -> tuple[bool, bytes] | None:
    """``(text, payload)`` if ``data`` is exactly one whole data frame, else None.

    One unfragmented text or binary frame (FIN set, no RSV bit), with the mask
    bit ``masked`` says it must have (a client's frames are masked, a
    server's are not: ``Frame.parse``'s "incorrect masking"), a 7- or 16-bit
    length at most ``limit``, and nothing before or after it.  A masked
    payload is unmasked with the library's ``apply_mask``.  A text payload
    must be valid UTF-8; if not, None (the library's path then fails the
    connection with 1007, as it would have).
    """
    size = len(data)
    if size < 2:
        return None
    first = data[0]
    if first != _TEXT_FIN and first != _BINARY_FIN:
        return None
    length = data[1]
    if (length >= _MASK_BIT) is not masked:
        return None
    length &= 0x7F
    if length < 126:
        start = 2
    elif length == 126:
        if size < 4:
            return None
        start = 4
        length = (data[2] << 8) | data[3]
    else:
        return None  # a 64-bit length: rare, left to the library
    if masked:
        start += 4
    if start + length != size or (limit is not None and length > limit):
        return None
    if masked:
        payload = apply_mask(memoryview(data)[start:], data[start - 4 : start])
    else:
        payload = data[start:]
    text = first == _TEXT_FIN
    if text:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return text, payload


def data_frame(payload: bytes, *, text: bool, mask: bool) -> list[bytes]:
    """What ``Frame.serialize`` writes for an unfragmented data frame without
    extensions, as parts for ``writelines``: the header, then the payload (an
    unmasked one is not copied; a masked one gets a fresh mask of
    :func:`mask_key`)."""
    size = len(payload)
    first = _TEXT_FIN if text else _BINARY_FIN
    bit = _MASK_BIT if mask else 0
    if size < 126:
        header = bytes((first, bit | size))
    elif size < 65536:
        header = _HEADER_16.pack(first, bit | 126, size)
    else:
        header = _HEADER_64.pack(first, bit | 127, size)
    if not mask:
        return [header, payload]
    key = mask_key()
    return [header + key, apply_mask(payload, key)]


#: Masking keys are cut from this many bytes of ``os.urandom`` at a time.
MASK_POOL_SIZE = 4096


class _MaskPool(threading.local):
    pool = b""
    used = 0


_masks = _MaskPool()


def mask_key() -> bytes:
    """A fresh four-byte masking key for a client's frame (RFC 6455 §5.3).

    The keys come from the operating system's CSPRNG like the library's
    ``secrets.token_bytes(4)``, but one ``getrandom`` call serves a thousand
    frames instead of one: the add-on masks every message it passes to Home
    Assistant.  Each key is used once: the pool is per thread, and a forked
    child starts with none of its parent's (``os.register_at_fork``), so no two
    frames anywhere share a key drawn from the same bytes.
    """
    masks = _masks
    used = masks.used
    if used >= len(masks.pool):
        masks.pool = os.urandom(MASK_POOL_SIZE)
        used = 0
    masks.used = used + 4
    return masks.pool[used : used + 4]


def _forget_masks() -> None:
    _masks.pool = b""
    _masks.used = 0


os.register_at_fork(after_in_child=_forget_masks)


def frame_size(header: bytes) -> int | None:
    """A frame's whole size from the start of its header; None if the header is cut short."""
    if len(header) < 2:
        return None
    length = header[1] & 0x7F
    size = 6 if header[1] & _MASK_BIT else 2
    if length == 126:
        if len(header) < 4:
            return None
        length = (header[2] << 8) | header[3]
        size += 2
    elif length == 127:
        if len(header) < 10:
            return None
        length = int.from_bytes(header[2:10], "big")
        size += 8
    return size + length


class FrameBoundary:
    """Where the library's parser is in a byte stream, followed by frame headers alone.

    Feed it every byte the library is fed (:meth:`track`); :attr:`at_start` is
    true exactly when the library waits for a new frame with nothing buffered,
    which is when :func:`whole_data_frame` may read the next bytes instead.
    """

    __slots__ = ("_head", "_skip")

    def __init__(self) -> None:
        # The start of a frame header not had whole yet, and the bytes left of
        # the frame the stream is in.  Both empty: at the start of a frame.
        self._head = b""
        self._skip = 0

    @property
    def at_start(self) -> bool:
        return not self._skip and not self._head

    def track(self, data: bytes) -> None:
        n = len(data)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            return
        head = self._head
        while True:
            chunk = head + data[pos : pos + 14] if head else data[pos : pos + 14]
            size = frame_size(chunk)
            if size is None:  # the header is cut: keep its start
                self._head = chunk
                self._skip = 0
                return
            end = pos - len(head) + size
            head = b""
            if end >= n:
                self._head = b""
                self._skip = end - n
                return
            pos = end
