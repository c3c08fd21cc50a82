"""Random interleavings of peer events and local give-ups never end the tunnel (R-MT-15).

A hypothesis state machine drives two real sessions joined by a real
WebSocket on 127.0.0.1: the relay side opens HTTP exchanges and WebSockets
whose owners may give up at any moment (a closed tab, a timeout), while the
add-on side's handlers answer, stream, reset, close or simply return, in
any order, valid or not.  After every step both sessions must still be up;
at the end, once every owner and handler is done, no stream is left on
either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from session_pair import session_pair

from homeport.protocol import RequestHead, ResponseHead
from homeport.tunnel.session import TunnelSession
from homeport.tunnel.stream import Stream, StreamClosed, WsClose

HANDLER_ACTIONS = ("respond", "upgrade", "data", "end", "reset", "ws_send", "ws_close", "return")
OWNER_ACTIONS = ("body", "end_body", "ws_send", "ws_close")
#: Body and message sizes: empty, small, over a chunk, over the writer's high-water mark.
SIZES = st.sampled_from([0, 100, 70_000, 300_000])


class Exchange:
    """One relay-side exchange: its stream, the owner task, and its add-on handler's inbox."""

    def __init__(self, stream: Stream, owner: asyncio.Task[None]) -> None:
        self.stream = stream
        self.owner = owner
        self.commands: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()


class TunnelStates(RuleBasedStateMachine):
    exchanges = Bundle("exchanges")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        self.handlers: dict[str, asyncio.Queue[tuple[str, Any]]] = {}
        self.owners: list[asyncio.Task[None]] = []
        self.count = 0

    # ---------------------------------------------------------------- set-up

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 15))

    @initialize()
    def start(self) -> None:
        async def enter() -> Any:
            return await self.stack.enter_async_context(session_pair(on_stream=self.handler))

        self.pair = self.run(enter())

    async def handler(self, stream: Stream) -> None:
        """The add-on side: does what the state machine tells it, in order."""
        assert stream.request is not None
        queue = self.handlers.setdefault(stream.request.target, asyncio.Queue())
        while True:
            action, arg = await queue.get()
            if action == "return":
                return
            if action == "respond":
                stream.respond(ResponseHead(200), end=arg == 0)
            elif action == "upgrade":
                stream.respond(ResponseHead(101))
            elif action == "data":
                await stream.write(b"d" * arg)
            elif action == "end":
                await stream.write(b"", end=True)
            elif action == "reset":
                stream.reset()
            elif action == "ws_send":
                await stream.send_ws(b"m" * arg, text=False)
            elif action == "ws_close":
                stream.close_ws(1000)

    @staticmethod
    async def owner(stream: Stream) -> None:
        """The relay side: waits for the answer and reads it all, as the proxy does."""
        with stream:
            head = await stream.response_head()
            if head.status == 101:
                while not isinstance(await stream.receive_ws(), WsClose):
                    pass
            else:
                async for _ in stream.iter_body():
                    pass

    def settle(self) -> None:
        self.run(asyncio.sleep(0.005))

    # ----------------------------------------------------------------- rules

    @rule(target=exchanges, kind=st.sampled_from(["get", "post", "websocket"]))
    def open(self, kind: str) -> Exchange:
        self.count += 1
        target = f"/{kind}/{self.count}"
        session: TunnelSession = self.pair.relay
        stream = session.open_stream(
            RequestHead("POST" if kind == "post" else "GET", target),
            websocket=kind == "websocket",
            end_stream=kind == "get",
        )
        task = self.loop.create_task(self.owner(stream))
        self.owners.append(task)
        exchange = Exchange(stream, task)
        self.handlers[target] = exchange.commands
        self.settle()
        return exchange

    @rule(exchange=exchanges, action=st.sampled_from(HANDLER_ACTIONS), size=SIZES)
    def addon_does(self, exchange: Exchange, action: str, size: int) -> None:
        exchange.commands.put_nowait((action, size))
        self.settle()

    @rule(exchange=exchanges, action=st.sampled_from(OWNER_ACTIONS), size=SIZES)
    def relay_sends(self, exchange: Exchange, action: str, size: int) -> None:
        async def send() -> None:
            stream = exchange.stream
            with contextlib.suppress(StreamClosed, RuntimeError):
                if action == "body":
                    await stream.write(b"u" * size)
                elif action == "end_body":
                    await stream.write(b"", end=True)
                elif action == "ws_send":
                    await stream.send_ws(b"w" * size, text=True)
                elif action == "ws_close":
                    stream.close_ws(1000)

        task = self.loop.create_task(send())
        self.owners.append(task)
        self.settle()

    @rule(exchange=exchanges)
    def owner_gives_up(self, exchange: Exchange) -> None:
        """A closed tab, a navigation, a timeout: the owner is cancelled wherever it is."""
        exchange.owner.cancel()
        self.settle()

    # ------------------------------------------------------------ invariants

    @invariant()
    def tunnel_is_up(self) -> None:
        if hasattr(self, "pair"):
            assert not self.pair.relay.ended, self.pair.relay.close_reason
            assert not self.pair.addon.ended, self.pair.addon.close_reason

    def teardown(self) -> None:
        try:
            if hasattr(self, "pair") and not (self.pair.relay.ended or self.pair.addon.ended):
                for task in self.owners:
                    task.cancel()
                for queue in self.handlers.values():
                    queue.put_nowait(("return", None))
                self.run(self._quiet())
                self.tunnel_is_up()
                relay, addon = self.pair.relay, self.pair.addon
                assert not relay.streams, relay.streams
                assert not addon.streams, addon.streams
                assert relay.connection.open_streams == 0
                assert addon.connection.open_streams == 0
                assert relay.connection.message_reserve == 0
                assert addon.connection.message_reserve == 0
            self.run(self.stack.aclose())
        finally:
            self.loop.close()

    async def _quiet(self) -> None:
        await asyncio.gather(*self.owners, return_exceptions=True)
        relay, addon = self.pair.relay, self.pair.addon
        while relay.streams or addon.streams or addon._handlers:
            await asyncio.sleep(0.01)
        while relay.connection.open_streams or addon.connection.open_streams:
            await asyncio.sleep(0.01)


TunnelStates.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    # Handlers told to do impossible things (data before a response) fail loudly on
    # purpose: that is one of the interleavings.  Keep the run's output readable.
    caplog.set_level(logging.CRITICAL, logger="homeport.tunnel.session")


test_tunnel_states = TunnelStates.TestCase
