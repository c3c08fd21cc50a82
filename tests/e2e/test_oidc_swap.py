"""R-OIDC-01, issue #9 item 3: a provider sign-in finished in the attacker's browser.

The attack: Mallory starts a sign-in (or "link a provider" in his own account),
sends Alice the provider URL, Alice signs in at the provider, her browser
delivers the callback, and Mallory's browser (which holds the flow's binding
cookie) finishes the flow, as Alice, or with Alice's identity linked to his
account. Each test plays it with two browsers: separate cookie jars and separate
client addresses (127.0.0.2 and 127.0.0.3), with mail off (the relay's default
without SMTP, where no new-network code stands in the way), for a query-mode
provider (Google's way) and for Apple's ``form_post``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from oidc_idp import AppleTeam, StandInIdp, Walk, stand_in_idp, walk
from sqlalchemy import select
from stack import PASSWORD, Browser, Stack, start_stack
from test_oidc_providers import SERVICES_ID, apple_stack
from test_oidc_signin import oidc_options
from yarl import URL

from homeport.accounts.models import OidcFlow, OidcIdentity
from homeport.accounts.oidc_tokens import VerifiedIdentity
from homeport.relay.site.oidc import BINDING_COOKIE
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE

pytestmark = pytest.mark.timeout(180)

MALLORY_IP, ALICE_IP = "127.0.0.2", "127.0.0.3"
MALLORY = "mallory@example.com"
ALICE = "alice@example.com"
ALICE_SUB = "alice-at-the-provider"

Launch = Callable[[Path], contextlib.AbstractAsyncContextManager[tuple[Stack, StandInIdp, str]]]


@contextlib.asynccontextmanager
async def _query_mode(tmp_path: Path) -> AsyncIterator[tuple[Stack, StandInIdp, str]]:
    async with stand_in_idp() as idp, start_stack(tmp_path, **oidc_options(idp)) as stack:
        yield stack, idp, "idp"


@contextlib.asynccontextmanager
async def _form_post(tmp_path: Path) -> AsyncIterator[tuple[Stack, StandInIdp, str]]:
    team = AppleTeam()
    async with (
        stand_in_idp(client_id=SERVICES_ID, apple=team, form_post=True) as idp,
        apple_stack(tmp_path, idp, team) as stack,
    ):
        yield stack, idp, "apple"


MODES = pytest.mark.parametrize("launch", [_query_mode, _form_post], ids=["query", "form_post"])


def _cookie(browser: Browser, name: str) -> str | None:
    return next((c.value for c in browser.session.cookie_jar if c.key == name), None)


async def _provider_url(browser: Browser, start: str, headers: dict[str, str]) -> URL:
    """Start a flow in ``browser`` and stop where it would be sent to the provider."""
    stopped = await walk(
        browser.session, start, headers=headers, stop=lambda url: url.path == "/authorize"
    )
    assert stopped.url.path == "/authorize", stopped.text
    assert _cookie(browser, BINDING_COOKIE)
    return stopped.url


def _refused_where_expected(page: Walk, idp: StandInIdp, name: str) -> None:
    """A GET callback carries the cookie: refused there, no code redeemed. Apple's
    cross-site POST cannot: refused at the finishing GET, where the victim's browser
    brings the ticket but not the cookie."""
    if name == "apple":
        assert page.url.path == "/signin/oidc/finish"
        assert set(page.url.query) == {"ticket"}
        assert len(idp.token_requests) == 1
    else:
        assert page.url.path == f"/signin/oidc/{name}/callback"
        assert idp.token_requests == []


async def _finish_attempts(stack: Stack, mallory: Browser) -> None:
    """Everything Mallory's browser can try after Alice's callback: nothing is released."""
    base = stack.account_origin
    async with mallory.request("GET", base + "/signin/oidc/finish") as r:
        assert r.status == 400
    async with mallory.request("GET", base + "/signin/oidc/finish?ticket=" + "t" * 43) as r:
        assert r.status == 400
    async with mallory.request(
        "POST", base + "/security/oidc/confirm", headers={"Origin": base}
    ) as r:
        assert r.status in (303, 400, 403, 404)


async def _flows(stack: Stack) -> list[OidcFlow]:
    async with stack.relay.database.session() as s:
        return list(await s.scalars(select(OidcFlow)))


async def _identities(stack: Stack) -> list[OidcIdentity]:
    async with stack.relay.database.session() as s:
        return list(await s.scalars(select(OidcIdentity)))


@MODES
async def test_a_signin_finished_in_another_browser_signs_nobody_in(
    tmp_path: Path, launch: Launch
) -> None:
    async with launch(tmp_path) as (stack, idp, name):
        # Alice's account, with the provider linked (as her earlier sign-ins did).
        alice = await stack.relay.accounts.create_user(ALICE, PASSWORD)
        identity = VerifiedIdentity(idp.issuer, ALICE_SUB, ALICE, True)
        await stack.relay.accounts.oidc.link(alice.id, name, identity)
        idp.user.sub, idp.user.email = ALICE_SUB, ALICE
        async with (
            stack.browser(source_ip=MALLORY_IP) as mallory,
            stack.browser(source_ip=ALICE_IP) as victim,
        ):
            lure = await _provider_url(mallory, f"{stack.account_origin}/signin/oidc/{name}", {})
            # Alice opens the link and signs in at the provider; her browser comes back.
            page = await walk(victim.session, str(lure))
            assert page.status == 400, page.text
            assert "started in another browser" in page.text  # and Alice is told so
            _refused_where_expected(page, idp, name)
            assert not _cookie(victim, ACCOUNT_COOKIE)
            await _finish_attempts(stack, mallory)
            assert not _cookie(mallory, ACCOUNT_COOKIE)
            async with mallory.request("GET", stack.account_origin + "/") as r:
                assert r.status == 303
                assert r.headers["Location"] == "/signin"
        # The flow is used up, and no session exists for Alice.
        assert [f.status for f in await _flows(stack)] == ["done"]
        assert await stack.relay.accounts.list_sessions(alice.id) == []


@MODES
async def test_a_link_finished_in_another_browser_links_nothing(
    tmp_path: Path, launch: Launch
) -> None:
    async with launch(tmp_path) as (stack, idp, name):
        await stack.relay.accounts.create_user(MALLORY, PASSWORD)
        idp.user.sub, idp.user.email = ALICE_SUB, ALICE
        async with (
            stack.browser(source_ip=MALLORY_IP) as mallory,
            stack.browser(source_ip=ALICE_IP) as victim,
        ):
            async with mallory.request(
                "POST",
                stack.account_origin + "/signin",
                data={"email": MALLORY, "password": PASSWORD, "next": "/"},
                headers={"Origin": stack.account_origin},
            ) as r:
                assert r.status == 303
            lure = await _provider_url(
                mallory,
                f"{stack.account_origin}/security/oidc/{name}/link",
                {"Sec-Fetch-Site": "same-origin"},
            )
            page = await walk(victim.session, str(lure))
            assert page.status == 400, page.text
            _refused_where_expected(page, idp, name)
            assert not _cookie(victim, ACCOUNT_COOKIE)
            await _finish_attempts(stack, mallory)
            async with mallory.request(
                "GET", stack.account_origin + "/security/signin-methods"
            ) as r:
                assert r.status == 200
                assert ALICE not in await r.text()
        assert await _identities(stack) == []
        assert [f.status for f in await _flows(stack)] == ["done"]
        # Alice's own "Sign in with…" later makes her own account, not Mallory's.
        async with stack.browser(source_ip=ALICE_IP) as victim:
            page = await walk(victim.session, f"{stack.account_origin}/signin/oidc/{name}")
            assert page.status == 200, page.text
            assert page.url.path == "/"
            assert ALICE in page.text
            assert MALLORY not in page.text
        [linked] = await _identities(stack)
        owner = await stack.relay.accounts.get_user(linked.user_id)
        assert owner is not None
        assert owner.email == ALICE
