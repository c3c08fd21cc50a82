"""The pool of raw keep-alive connections to Home Assistant (``addon/upstream.py``).

Real sockets against a scripted Home Assistant (``tests/support/scripted_ha.py``):
a connection is reused only after a complete response on a connection both
sides keep alive, never after one cut short, ``Connection: close``, or a
byte nobody asked for; idle ones Home Assistant closes are dropped; the limit
queues, the idle timer closes, a dial that fails says so.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from scripted_ha import Conn, keep_alive, response, scripted_ha

from homeport.addon.upstream import Origin, RawHeaders, UpstreamConnection, UpstreamPool

pytestmark = pytest.mark.timeout(30)

GET = b"GET /x HTTP/1.1\r\nhost: ha\r\n\r\n"


class Recorder:
    """An upstream user that writes one request and records the answer."""

    def __init__(self, request: bytes = GET) -> None:
        self.request = request
        self.connection: UpstreamConnection | None = None
        self.status: int | None = None
        self.body = b""
        self.complete = False
        self.lost: BaseException | bool | None = False
        self.unavailable: BaseException | None = None
        self.ended = asyncio.Event()
        self.got_connection = asyncio.Event()

    def upstream_ready(self, connection: UpstreamConnection) -> None:
        self.connection = connection
        connection.user = self
        connection.write(self.request)
        self.got_connection.set()

    def upstream_unavailable(self, error: BaseException) -> None:
        self.unavailable = error
        self.ended.set()

    def upstream_head(self, status: int, headers: RawHeaders, body: bytes, complete: bool) -> None:
        self.status = status
        self.upstream_body(body, complete)

    def upstream_body(self, body: bytes, complete: bool) -> None:
        self.body += body
        if complete:
            self.complete = True
            assert self.connection is not None
            self.connection.finish(reusable=True)
            self.ended.set()

    def upstream_upgraded(self, status: int, headers: RawHeaders, rest: bytes) -> None:
        raise AssertionError("no upgrade asked for")

    def upstream_lost(self, error: BaseException | None) -> None:
        self.lost = error
        self.ended.set()

    def upstream_writable(self) -> None:
        pass


async def fetch(pool: UpstreamPool, request: bytes = GET) -> Recorder:
    user = Recorder(request)
    pool.acquire(user)
    await asyncio.wait_for(user.ended.wait(), 10)
    return user


async def wait_until(condition: object, what: str) -> None:
    async with asyncio.timeout(5):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def pool_for(url: str, **kwargs: float) -> object:
    pool = UpstreamPool(Origin.parse(url), **kwargs)  # type: ignore[arg-type]
    try:
        yield pool
    finally:
        await pool.close()


async def test_a_connection_is_reused_after_a_complete_response() -> None:
    async with scripted_ha(keep_alive) as ha, pool_for(ha.url) as pool:
        first = await fetch(pool)
        second = await fetch(pool)
        assert (first.status, first.body, second.status, second.body) == (200, b"ok", 200, b"ok")
        assert first.connection is second.connection
        assert second.connection is not None
        assert second.connection.reused
        assert ha.connections == 1
        assert len(ha.seen) == 2
        assert pool.idle == 1
        assert pool.total == 1


async def test_connection_close_from_home_assistant_is_never_reused() -> None:
    async def closing(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(response(200, b"ok", "Connection: close"))

    async with scripted_ha(closing) as ha, pool_for(ha.url) as pool:
        first = await fetch(pool)
        second = await fetch(pool)
        assert first.complete
        assert second.complete
        assert first.connection is not second.connection
        assert ha.connections == 2
        await wait_until(lambda: pool.total == 0, "closed connections leave the pool")


async def test_an_http_1_0_answer_is_never_reused() -> None:
    async def old(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with scripted_ha(old) as ha, pool_for(ha.url) as pool:
        await fetch(pool)
        await fetch(pool)
        assert ha.connections == 2


async def test_a_response_cut_short_is_lost_and_its_connection_never_reused() -> None:
    async def cut_then_fine(conn: Conn) -> None:
        await conn.request()
        if len(conn.seen) == 1:
            await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf.")
            conn.close()
            return
        await conn.send(response(200, b"ok"))
        await keep_alive(conn)

    async with scripted_ha(cut_then_fine) as ha, pool_for(ha.url) as pool:
        cut = await fetch(pool)
        assert cut.status == 200
        assert cut.body == b"half."
        assert not cut.complete
        assert cut.lost is None  # the connection ended, no exception
        fine = await fetch(pool)
        assert fine.complete
        assert fine.connection is not cut.connection
        assert ha.connections == 2


async def test_a_response_the_user_did_not_finish_cleanly_closes_its_connection() -> None:
    async with scripted_ha(keep_alive) as ha, pool_for(ha.url) as pool:
        user = Recorder()
        user.upstream_body = lambda body, complete: user.ended.set()  # type: ignore[method-assign]
        pool.acquire(user)
        await asyncio.wait_for(user.ended.wait(), 10)
        assert user.connection is not None
        user.connection.finish(reusable=False)  # e.g. the request body was not sent in full
        await wait_until(lambda: pool.total == 0, "the connection to close")
        assert pool.idle == 0
        again = await fetch(pool)
        assert again.complete
        assert ha.connections == 2


async def test_an_idle_connection_home_assistant_closes_is_dropped() -> None:
    async def answer_then_hang_up(conn: Conn) -> None:
        await conn.request()
        await conn.send(response(200, b"ok"))
        await asyncio.sleep(0.1)
        conn.close()  # its keep-alive timer, or a restart

    async with scripted_ha(answer_then_hang_up) as ha, pool_for(ha.url) as pool:
        first = await fetch(pool)
        assert first.complete
        assert pool.idle == 1
        await wait_until(lambda: pool.idle == 0 and pool.total == 0, "the dead one to go")
        second = await fetch(pool)
        assert second.complete
        assert second.connection is not first.connection
        assert ha.connections == 2


async def test_the_limit_queues_requests_until_a_connection_frees_up() -> None:
    release = asyncio.Event()

    async def slow_first(conn: Conn) -> None:
        while await conn.request() is not None:
            if len(conn.seen) == 1:
                await release.wait()
            await conn.send(response(200, b"ok"))

    async with scripted_ha(slow_first) as ha, pool_for(ha.url, limit=1) as pool:
        first, second = Recorder(), Recorder()
        pool.acquire(first)
        pool.acquire(second)
        await asyncio.wait_for(first.got_connection.wait(), 10)
        assert pool.total == 1
        assert pool.waiting == 1
        assert not second.got_connection.is_set()
        release.set()
        await asyncio.wait_for(second.ended.wait(), 10)
        assert first.complete
        assert second.complete
        assert second.connection is first.connection  # handed over, not dialled
        assert ha.connections == 1
        assert pool.waiting == 0


async def test_a_waiter_that_gave_up_is_skipped() -> None:
    release = asyncio.Event()

    async def slow(conn: Conn) -> None:
        while await conn.request() is not None:
            await release.wait()
            await conn.send(response(200, b"ok"))

    async with scripted_ha(slow) as ha, pool_for(ha.url, limit=1) as pool:
        first, gone, third = Recorder(), Recorder(), Recorder()
        pool.acquire(first)
        pool.acquire(gone)
        pool.acquire(third)
        pool.cancel(gone)
        assert pool.waiting == 1
        release.set()
        await asyncio.wait_for(third.ended.wait(), 10)
        assert not gone.got_connection.is_set()
        assert ha.connections == 1


async def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    async with scripted_ha(keep_alive) as ha, pool_for(ha.url, idle_timeout=0.2) as pool:
        await fetch(pool)
        assert pool.idle == 1
        await wait_until(lambda: pool.total == 0, "the idle timer")
        await wait_until(lambda: not ha.open_connections, "Home Assistant to see the close")
        assert (await fetch(pool)).complete


async def test_a_second_response_nobody_asked_for_closes_the_connection() -> None:
    async def double(conn: Conn) -> None:
        while await conn.request() is not None:
            await conn.send(response(200, b"ok") + response(200, b"surprise"))

    async with scripted_ha(double) as ha, pool_for(ha.url) as pool:
        first = await fetch(pool)
        assert first.body == b"ok"
        assert first.complete
        await wait_until(lambda: pool.total == 0, "the connection out of step to close")
        second = await fetch(pool)
        assert second.body == b"ok"  # its own answer, never the surplus
        assert ha.connections == 2


async def test_bytes_on_an_idle_connection_close_it() -> None:
    async def chatty(conn: Conn) -> None:
        await conn.request()
        await conn.send(response(200, b"ok"))
        await asyncio.sleep(0.05)
        await conn.send(response(200, b"unasked"))
        await asyncio.sleep(5)

    async with scripted_ha(chatty) as ha, pool_for(ha.url) as pool:
        await fetch(pool)
        await wait_until(lambda: pool.total == 0, "the out-of-step connection to close")
        assert ha.connections == 1


async def test_interim_responses_are_skipped() -> None:
    async def early_hints(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        await conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        await conn.send(response(201, b"made"))
        await keep_alive(conn)

    async with scripted_ha(early_hints) as ha, pool_for(ha.url) as pool:
        user = await fetch(pool)
        assert (user.status, user.body, user.complete) == (201, b"made", True)
        assert pool.idle == 1


async def test_a_body_until_the_connection_closes_ends_with_it() -> None:
    async def close_delimited(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        conn.close()

    async with scripted_ha(close_delimited) as ha, pool_for(ha.url) as pool:
        user = await fetch(pool)
        assert (user.body, user.complete) == (b"all of it", True)
        assert ha.connections == 1
        await wait_until(lambda: pool.total == 0, "the closed connection to leave")


async def test_a_dial_that_fails_reports_unavailable_and_frees_its_place() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with pool_for(f"http://127.0.0.1:{port}") as pool:
        user = await fetch(pool)
        assert isinstance(user.unavailable, OSError)
        assert pool.total == 0


async def test_a_closed_pool_dials_nothing() -> None:
    async with scripted_ha(keep_alive) as ha:
        pool = UpstreamPool(Origin.parse(ha.url))
        await fetch(pool)
        await pool.close()
        user = await fetch(pool)
        assert isinstance(user.unavailable, ConnectionError)
        await wait_until(lambda: not ha.open_connections, "the idle one to close")
        assert ha.connections == 1


@pytest.mark.parametrize(
    ("url", "host", "dial", "tls"),
    [
        ("http://127.0.0.1:8123", "127.0.0.1:8123", "127.0.0.1", False),
        ("http://homeassistant", "homeassistant", "homeassistant", False),
        ("https://ha.example:443/ignored?x", "ha.example", "ha.example", True),
        ("https://[::1]:8099", "[::1]:8099", "::1", True),
        ("http://ha.localhost:8123", "ha.localhost:8123", "127.0.0.1", False),
    ],
)
def test_origin(url: str, host: str, dial: str, tls: bool) -> None:
    origin = Origin.parse(url)
    assert origin.host_header == host
    assert origin.dial_host == dial
    assert (origin.tls is not None) == tls
    if origin.tls is not None:  # verified as any HTTPS client does (as aiohttp did)
        assert origin.tls.check_hostname
        assert origin.tls.verify_mode.name == "CERT_REQUIRED"


@pytest.mark.parametrize("url", ["ftp://ha", "http://", "ha:8123", "//ha"])
def test_origin_refuses_what_is_not_an_http_base(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        Origin.parse(url)


def test_the_pool_dials_and_reuses_on_uvloop() -> None:
    """The add-on runs on uvloop (whose create_connection has no happy-eyeballs options)."""
    import uvloop

    async def round_trips() -> tuple[int, int]:
        async with scripted_ha(keep_alive) as ha, pool_for(ha.url) as pool:
            for _ in range(3):
                assert (await fetch(pool)).complete
            return ha.connections, len(ha.seen)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(round_trips()) == (1, 3)
