"""Reads from a TLS transport through one buffer per thread (homeport.tls.reads).

Real TLS 1.3 over 127.0.0.1, on uvloop (what the relay and the add-on run) and
on asyncio's own loop.  The allocation is watched with tracemalloc: a plain
``asyncio.Protocol`` is handed a fresh 256 KiB buffer per read (shrunk to what
arrived), which with glibc's fixed mmap threshold meant an mmap, an mremap and
a munmap per read; a :class:`ThreadBufferReads` protocol gets exactly the bytes
that arrived, and the same bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from homeport.memory import MMAP_THRESHOLD
from homeport.relay.proxy.connection import TenantConnection
from homeport.tls.context import client_context, server_context
from homeport.tls.devca import ensure_dev_ca
from homeport.tls.reads import READ_SIZE, ThreadBufferReads
from homeport.tunnel.raw import RawPipe

HOST = "relay.home.localhost"
MESSAGES = 200
MESSAGE = bytes(range(256)) * 4  # 1 KiB, not all one byte value


class Received:
    """A digest of what arrived (keeping the bytes would dwarf what is measured)."""

    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self.digest = hashlib.sha256()
        self.count = 0
        self.done = done

    def add(self, data: bytes) -> None:
        self.digest.update(data)
        self.count += len(data)
        if self.count >= MESSAGES * len(MESSAGE) and not self.done.done():
            self.done.set_result(self.digest.digest())


class Collecting(ThreadBufferReads):
    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self.received = Received(done)

    def data_received(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.received.add(data)


class CollectingPlain(asyncio.Protocol):
    """The control: what uvloop and asyncio do for a plain protocol."""

    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self.received = Received(done)

    def data_received(self, data: bytes) -> None:
        self.received.add(data)


async def _largest_allocation_while_reading(
    factory: Callable[[asyncio.Future[bytes]], asyncio.BaseProtocol],
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> tuple[int, bytes]:
    """Peak of traced memory while ``MESSAGES`` messages arrive one at a time, and their digest."""
    server_ctx, client_ctx = contexts
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    server = await loop.create_server(lambda: factory(done), "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ctx, server_hostname=HOST
    )
    writer.write(MESSAGE)  # the first read sets up what every later one reuses
    await writer.drain()
    await asyncio.sleep(0.05)
    tracemalloc.start()
    try:
        baseline, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(MESSAGES - 1):
            writer.write(MESSAGE)
            await writer.drain()
            await asyncio.sleep(0)  # one read per message, as on a WebSocket echo
        received = await asyncio.wait_for(done, 10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        writer.close()
        server.close()
    return peak - baseline, received


@pytest.fixture
def contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = ensure_dev_ca(tmp_path / "data")
    cert, key = ca.issue_server_certificate([HOST], tmp_path / "tls")
    return server_context(cert, key), client_context(ca.cert_path)


@pytest.mark.parametrize(
    "loop_factory", [uvloop.new_event_loop, asyncio.new_event_loop], ids=["uvloop", "asyncio"]
)
def test_tls_reads_allocate_what_arrived_not_a_256_kib_buffer(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        plain_peak, plain_bytes = runner.run(
            _largest_allocation_while_reading(CollectingPlain, contexts)
        )
        buffered_peak, buffered_bytes = runner.run(
            _largest_allocation_while_reading(Collecting, contexts)
        )
    expected = hashlib.sha256(MESSAGE * MESSAGES).digest()
    assert plain_bytes == expected
    assert buffered_bytes == expected  # same bytes, in order, none lost to the shared buffer
    assert plain_peak >= 256 * 1024, plain_peak  # the control: a fresh 256 KiB per read
    assert buffered_peak < 64 * 1024, buffered_peak


def test_the_tls_facing_protocols_read_through_the_shared_buffer() -> None:
    # uvloop reads into a buffer only for protocols that are not asyncio.Protocol subclasses.
    for protocol in (RawPipe, TenantConnection):
        assert issubclass(protocol, ThreadBufferReads)
        assert not issubclass(protocol, asyncio.Protocol)
    assert READ_SIZE < MMAP_THRESHOLD  # its copies stay below glibc's fixed mmap threshold


class KeepingOwner:
    """A tunnel session that (wrongly) keeps what its pipe hands it."""

    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self.received = Received(done)
        self.kept: list[bytes | memoryview] = []

    def data_received(self, data: bytes | memoryview) -> None:
        self.kept.append(data)
        self.received.add(bytes(data))  # what the frame decoder does: copy while called

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def pipe_closed(self, reason: str) -> None:
        pass


def test_a_tunnel_pipe_hands_a_view_that_dies_with_the_call(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """The raw tunnel pipe passes its session a view of the shared read buffer
    instead of a copy.  What the session copies during the call is exactly what
    was sent; a view it kept is released, so using it later fails loudly
    instead of reading whatever the next read of any connection put there."""

    async def run() -> tuple[bytes, list[bytes | memoryview]]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bytes] = loop.create_future()
        owner = KeepingOwner(done)

        def pipe() -> RawPipe:
            raw = RawPipe()
            raw.start(owner)
            return raw

        server = await loop.create_server(pipe, "127.0.0.1", 0, ssl=contexts[0])
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=contexts[1], server_hostname=HOST
        )
        try:
            for _ in range(MESSAGES):
                writer.write(MESSAGE)
                await writer.drain()
                await asyncio.sleep(0)
            return await asyncio.wait_for(done, 10), owner.kept
        finally:
            writer.close()
            server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        digest, kept = runner.run(run())
    assert digest == hashlib.sha256(MESSAGE * MESSAGES).digest()
    assert kept
    assert all(isinstance(view, memoryview) for view in kept)
    for view in kept:
        with pytest.raises(ValueError, match="released"):
            bytes(view)
