"""Reading from a TLS transport without a fresh 256 KiB buffer per read.

uvloop gives a plain ``asyncio.Protocol`` on a TLS transport what it decrypted
by ``SSLObject.read(256 KiB)``: a new 256 KiB bytes object for every read,
shrunk to what arrived.  With glibc's mmap threshold fixed at 128 KiB (as
:mod:`homeport.memory` had it) each of those reads cost an ``mmap``, an
``mremap``, a ``munmap`` and fresh zeroed pages: on the WebSocket echo
(``bench/run.py``) one of each per message on each hop, measured with
``strace -c``; above the threshold it is still a 256 KiB allocation per read.

A :class:`asyncio.BufferedProtocol` is read into memory it provides instead.
:class:`ThreadBufferReads` provides one buffer per thread, shared by every
connection of that thread's event loop: uvloop fills it and calls
:meth:`~ThreadBufferReads.buffer_updated` in one go, with no other callback in
between, and ``buffer_updated`` hands a copy of exactly what arrived to
``data_received`` (the tunnel's :class:`~homeport.tunnel.raw.RawPipe` passes a
view instead, released when the call returns, to a decoder that copies what it
keeps).  The protocols above stay bytes in, events out, and an idle
connection holds no read buffer (10,000 idle tunnels stay within their budget,
``bench/idle.py``).
"""

from __future__ import annotations

import asyncio
import threading

from homeport.memory import MMAP_THRESHOLD

__all__ = ["READ_SIZE", "ThreadBufferReads", "thread_buffer"]

#: Most bytes handed on per read: uvloop's own read size, below glibc's fixed
#: mmap threshold, so the copy handed to ``data_received`` comes from the heap.
READ_SIZE = 256 * 1024
assert READ_SIZE < MMAP_THRESHOLD

_local = threading.local()


def thread_buffer() -> memoryview:
    """This thread's read buffer (see the module docstring)."""
    # One per thread: SSLObject.read releases the GIL between get_buffer and
    # buffer_updated, so another thread's loop must not share this one.
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = _local.view = memoryview(bytearray(READ_SIZE))
    return view


class ThreadBufferReads(asyncio.BufferedProtocol):
    """A protocol that receives bytes like ``asyncio.Protocol``, read through a shared buffer.

    Subclasses implement :meth:`data_received`.  Not an ``asyncio.Protocol``
    subclass: uvloop reads into a buffer only for protocols that are not.
    """

    #: The buffer handed out by the last get_buffer (this thread's one): kept so
    #: that buffer_updated, which uvloop calls right after it, needs no lookup.
    _view: memoryview | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        # A protocol lives on one loop, hence one thread: its buffer is found once.
        view = self._view
        if view is None:
            view = self._view = thread_buffer()
        return view

    def buffer_updated(self, nbytes: int) -> None:
        view = self._view
        if view is None:
            view = thread_buffer()
        self.data_received(view[:nbytes].tobytes())

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    def eof_received(self) -> bool | None:
        return None
