"""Slow request bodies and piled-up requests (R-MT-14): units, then real sockets.

The end-to-end cases run one relay with a real add-on and stand-in, swap in
short deadlines and small caps through the configuration (never long sleeps),
and trickle bodies one byte at a time over real TLS connections
(``tests/support/trickle.py``).  Time bounds: a cut must come no sooner than
its deadline allows and well before the trickle would have finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from edge_checks import assert_relay_page
from stack import Stack, start_stack
from trickle import open_tls, post_head, trickle

from homeport.cli import build_parser, relay_config
from homeport.relay.config import RelayConfig
from homeport.relay.limits import MinimumRate, TenantLimits, UploadPace, parse_seconds
from homeport.relay.tenant import SESSION_COOKIE

# ------------------------------------------------------------------ units


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_minimum_rate_counts_waiting_time_only() -> None:
    clock = FakeClock()
    rate = MinimumRate(1000, 10.0, clock=clock)
    rate.wait()
    clock.now += 9.0
    assert not rate.stalled()
    rate.received(500)  # half of min_bytes buys half a window
    assert rate.remaining() == pytest.approx(6.0)
    rate.hold()  # the relay is busy: time passes for free
    clock.now += 100.0
    assert rate.remaining() == pytest.approx(6.0)
    rate.wait()
    clock.now += 6.0
    assert rate.stalled()


def test_minimum_rate_banks_at_most_one_window() -> None:
    clock = FakeClock()
    rate = MinimumRate(1000, 10.0, clock=clock)
    rate.wait()
    rate.received(10**9)  # a big burst early on ...
    clock.now += 10.0
    assert rate.stalled(), "... does not pay for a long stall later"


def test_minimum_rate_one_byte_at_a_time_runs_out() -> None:
    clock = FakeClock()
    rate = MinimumRate(1000, 10.0, clock=clock)
    rate.wait()
    seconds = 0
    while not rate.stalled() and seconds < 100:
        clock.now += 1.0
        seconds += 1
        rate.received(1)
    assert seconds <= 11, "a byte a second is far below 1000 bytes per 10 s"


def test_minimum_rate_at_the_rate_never_runs_out() -> None:
    clock = FakeClock()
    rate = MinimumRate(1000, 10.0, clock=clock)
    rate.wait()
    for _ in range(1000):
        clock.now += 1.0
        rate.received(100)
        assert not rate.stalled()


def test_minimum_rate_off() -> None:
    clock = FakeClock()
    for rate in (MinimumRate(0, 10.0, clock=clock), MinimumRate(1000, 0, clock=clock)):
        rate.wait()
        clock.now += 10**6
        assert not rate.stalled()


async def test_upload_pace_cuts_a_silent_body_and_not_a_paused_one() -> None:
    cut: list[float] = []
    started = time.monotonic()
    with UploadPace(MinimumRate(100, 0.3), lambda: cut.append(time.monotonic())) as pace:
        pace.received(100)
        with pace.paused():  # the relay holds the body up far longer than a window
            await asyncio.sleep(0.8)
        assert cut == []
        await asyncio.sleep(1.0)  # now the client says nothing at all
    assert len(cut) == 1, "called once"
    assert 0.8 + 0.3 <= cut[0] - started < 1.7


async def test_upload_pace_lets_a_steady_body_through() -> None:
    cut: list[bool] = []
    with UploadPace(MinimumRate(100, 0.2), lambda: cut.append(True)) as pace:
        for _ in range(10):
            await asyncio.sleep(0.05)
            pace.received(50)  # 1000 bytes/s against a minimum of 500
    assert cut == []


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("10", 10.0), ("2.5", 2.5), (3, 3.0)])
def test_parse_seconds(text: object, seconds: float) -> None:
    assert parse_seconds(text, option="--x") == seconds


@pytest.mark.parametrize("text", ["", "-1", "soon", "inf", "nan", "1m"])
def test_parse_seconds_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="--x"):
        parse_seconds(text, option="--x")


def test_slow_body_options_from_flags_environment_and_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["relay", "--data-dir", str(tmp_path)]
    config = relay_config(build_parser().parse_args(base))
    assert (config.upload_min_bytes, config.upload_window) == (16 * 1024, 30.0)
    assert (config.account_body_seconds, config.account_max_requests) == (10.0, 32)
    monkeypatch.setenv("HOMEPORT_ACCOUNT_MAX_REQUESTS", "5")
    args = [*base, "--upload-min-bytes", "4K", "--upload-window", "12.5"]
    config = relay_config(build_parser().parse_args([*args, "--account-body-timeout", "3"]))
    assert (config.upload_min_bytes, config.upload_window) == (4096, 12.5)
    assert (config.account_body_seconds, config.account_max_requests) == (3.0, 5)
    with pytest.raises(SystemExit, match="--account-body-timeout"):
        relay_config(build_parser().parse_args([*base, "--account-body-timeout", "soon"]))


# ------------------------------------------------------------- end to end

module_loop = pytest.mark.asyncio(loop_scope="module")
ACCOUNT = "homeport.localhost"


@dataclasses.dataclass
class Site:
    stack: Stack
    session_token: str

    @property
    def config(self) -> RelayConfig:
        return self.stack.config

    @property
    def port(self) -> int:
        return self.stack.config.listen_port

    def limit(self, **changes: Any) -> None:
        """New limits for the account site and the tenant proxy (fresh counters)."""
        config = dataclasses.replace(self.stack.config, **changes)
        relay = self.stack.relay
        relay.account_limits.apply(config)
        relay.tenants.limits = TenantLimits(config)

    async def connect(self, host: str, source_ip: str = "127.0.0.1") -> Any:
        return await open_tls(self.port, host, self.stack.ca_path, source_ip=source_ip)

    def signin_post(self, length: int) -> bytes:
        origin = f"Origin: {self.stack.account_origin}"
        return post_head(ACCOUNT, self.port, "/signin", length, origin)

    def upload_post(self, length: int) -> bytes:
        host = self.config.tenant_host(self.stack.instance_id)
        cookie = f"Cookie: {SESSION_COOKIE}={self.session_token}"
        return post_head(host, self.port, "/upload", length, cookie)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    async with start_stack(tmp_path_factory.mktemp("slow")) as stack, stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        token = {c.key: c.value for c in browser.session.cookie_jar}[SESSION_COOKIE]
        running = Site(stack, token)
        try:
            yield running
        finally:
            running.limit()


@module_loop
async def test_a_trickling_form_post_is_cut_at_the_deadline(site: Site) -> None:
    """One byte every 0.3 s of a 100-byte form: 408 and closed at the 1.5 s deadline."""
    site.limit(account_body_seconds=1.5)
    reader, writer = await site.connect(ACCOUNT)
    result = await trickle(
        reader, writer, site.signin_post(100), length=100, interval=0.3, give_up=15
    )
    assert result.status == 408, result
    assert 1.4 <= result.after < 6.0, result.after
    assert result.sent < 30, "cut long before the body was complete"
    assert result.closed, "the connection goes with the answer (no lingering on it)"
    # The same form, sent at once, still signs in.
    async with site.stack.browser() as browser:
        await browser.sign_in_account_site()


@module_loop
async def test_trickling_bodies_are_cut_on_every_route(site: Site) -> None:
    """The deadline is in front of the router: JSON routes, unknown paths, GET with a body."""
    site.limit(account_body_seconds=1.0)
    origin = f"Origin: {site.stack.account_origin}"
    heads = [
        post_head(ACCOUNT, site.port, "/signin/passkey/options", 50, origin),
        post_head(ACCOUNT, site.port, "/no/such/route", 50, origin),
        post_head(ACCOUNT, site.port, "/signin", 50, origin).replace(b"POST", b"GET", 1),
    ]
    results = []
    for head in heads:
        reader, writer = await site.connect(ACCOUNT)
        results.append(await trickle(reader, writer, head, length=50, interval=0.3, give_up=10))
    assert [r.status for r in results] == [408, 408, 408], results
    assert all(r.after < 5.0 and r.closed for r in results), results


@module_loop
async def test_one_address_gets_429_beyond_its_share_and_others_carry_on(site: Site) -> None:
    site.limit(account_body_seconds=3.0, account_max_requests=4)
    held = []
    for _ in range(4):
        reader, writer = await site.connect(ACCOUNT)
        held.append(
            asyncio.create_task(
                trickle(reader, writer, site.signin_post(100), length=100, interval=0.3, give_up=15)
            )
        )
    await asyncio.sleep(0.5)  # all four are inside the relay, waiting for their bodies
    reader, writer = await site.connect(ACCOUNT)
    refused = await trickle(
        reader, writer, site.signin_post(100), length=100, interval=0.3, give_up=10
    )
    assert refused.status == 429, refused
    assert refused.after < 2.0, "at once, not at the deadline"
    assert refused.closed
    assert refused.header("Retry-After") == "5"
    # Someone else (another address) gets the sign-in page at once.
    async with site.stack.browser(source_ip="127.0.0.2") as visitor:
        started = time.monotonic()
        async with visitor.request("GET", site.stack.account_origin + "/signin") as r:
            assert r.status == 200
            assert "Sign in" in await r.text()
        assert time.monotonic() - started < 2.5
    results = await asyncio.gather(*held)
    assert [r.status for r in results] == [408] * 4, results
    # Slots come back when the requests end.
    async with site.stack.browser() as browser:
        await browser.sign_in_account_site()


@module_loop
async def test_the_refusal_pages_carry_the_relay_headers(site: Site) -> None:
    site.limit(account_body_seconds=0.5, account_max_requests=1)
    reader, writer = await site.connect(ACCOUNT)
    first = asyncio.create_task(
        trickle(reader, writer, site.signin_post(100), length=100, interval=0.2, give_up=10)
    )
    await asyncio.sleep(0.2)
    reader, writer = await site.connect(ACCOUNT)
    refused = await trickle(
        reader, writer, site.signin_post(10), length=10, interval=0.2, give_up=5
    )
    slow = await first
    csp = site.stack.relay.pages.csp
    assert (slow.status, refused.status) == (408, 429)
    assert_relay_page(slow.headers, csp, what="408")
    assert_relay_page(refused.headers, csp, what="429")


@module_loop
async def test_the_tunnel_endpoint_is_not_counted_or_cut(site: Site) -> None:
    """Add-on tunnels are long-lived and many share one CGNAT address: never refused."""
    stack = site.stack
    site.limit(account_body_seconds=30.0, account_max_requests=1)
    # A trickling POST from the add-on's own address holds the only slot ...
    reader, writer = await site.connect(ACCOUNT)
    holder = asyncio.create_task(
        trickle(reader, writer, site.signin_post(1000), length=1000, interval=0.2, give_up=25)
    )
    await asyncio.sleep(0.3)
    reader, writer = await site.connect(ACCOUNT)
    refused = await trickle(reader, writer, site.signin_post(5), length=5, interval=0.2, give_up=5)
    assert refused.status == 429, "the slot is taken"
    # ... and the add-on dialling again from there still gets its tunnel.
    connects = stack.addon.status.connects
    assert await stack.relay.hub.close_instance(stack.instance_id, "test")
    async with asyncio.timeout(20):
        while stack.addon.status.connects <= connects:
            await asyncio.sleep(0.02)
    await stack.wait_connected()
    assert not holder.done(), "the slot was held all along"
    async with stack.browser(source_ip="127.0.0.5") as browser:
        assert (await browser.sign_in("/echo")).status == 200
    holder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holder
    # A short body deadline never touches the tunnel (no body), however long it lives.
    site.limit(account_body_seconds=0.5, account_max_requests=1)
    await asyncio.sleep(1.5)
    assert stack.addon.status.connects == connects + 1
    async with stack.browser(source_ip="127.0.0.5") as browser:
        assert (await browser.sign_in("/echo")).status == 200


# ------------------------------------------------------------- tenant hosts


@module_loop
async def test_a_trickling_upload_is_cut_at_the_minimum_rate(site: Site) -> None:
    """1000 bytes per 1 s window required; one byte every 0.3 s: 408 within about a second."""
    site.limit(upload_min_bytes=1000, upload_window=1.0)
    host = site.config.tenant_host(site.stack.instance_id)
    reader, writer = await site.connect(host)
    result = await trickle(
        reader, writer, site.upload_post(5000), length=5000, interval=0.3, give_up=15
    )
    assert result.status == 408, result
    assert 0.9 <= result.after < 5.0, result.after
    assert result.closed, "the connection goes with the answer (no lingering on it)"
    assert_relay_page(result.headers, site.stack.relay.pages.csp, what="408")


@module_loop
async def test_an_upload_above_the_minimum_rate_goes_through(site: Site) -> None:
    site.limit(upload_min_bytes=1000, upload_window=1.0)
    stack = site.stack
    async with stack.browser() as browser:
        await browser.sign_in("/")

        async def steady() -> AsyncIterator[bytes]:
            for _ in range(12):
                await asyncio.sleep(0.2)
                yield b"s" * 400  # 2000 bytes/s, twice the minimum

        started = time.monotonic()
        async with browser.request("POST", stack.tenant_origin + "/upload", data=steady()) as r:
            assert r.status == 200
            assert (await r.json())["length"] == 4800
        assert time.monotonic() - started >= 2.0, "it really was slow"


@module_loop
async def test_time_the_relay_holds_an_upload_is_not_charged(site: Site) -> None:
    """The bandwidth cap keeps the relay from reading for ~2 s: the window is 0.5 s."""
    site.limit(upload_min_bytes=1000, upload_window=0.5, tenant_bandwidth=4000, tenant_burst=1000)
    stack = site.stack
    async with stack.browser() as browser:
        await browser.sign_in("/")
        started = time.monotonic()
        async with browser.request("POST", stack.tenant_origin + "/upload", data=b"b" * 9000) as r:
            assert r.status == 200
            assert (await r.json())["length"] == 9000
        assert time.monotonic() - started >= 1.5, "the cap did hold it up"
