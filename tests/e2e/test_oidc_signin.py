"""End to end: sign in with an OpenID provider on loopback, through the real relay.

The provider is ``StandInIdp`` (tests/support/oidc_idp.py): a real provider on
127.0.0.1 whose tokens the tests tamper with to drive each check. The browser
is an aiohttp client with its own cookies (``Stack.browser``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from oidc_idp import StandInIdp, Walk, stand_in_idp, walk
from smtp_sink import SmtpSink
from sqlalchemy import select, update
from stack import PASSWORD, Browser, Stack, start_stack
from yarl import URL

from homeport.accounts.models import OidcFlow, OidcIdentity, User
from homeport.accounts.oidc_tokens import VerifiedIdentity
from homeport.mail.settings import SmtpSettings
from homeport.relay.app import Relay
from homeport.relay.oidc_settings import OidcProvider
from homeport.relay.site.oidc import BINDING_COOKIE
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE, PENDING_COOKIE

pytestmark = pytest.mark.timeout(180)


def oidc_options(idp: StandInIdp) -> dict[str, Any]:
    """``start_stack`` options for a relay that offers ``idp`` (named "idp")."""
    provider = OidcProvider(
        name="idp",
        label="Test IdP",
        issuer=idp.issuer,
        client_id=idp.client_id,
        client_secret=idp.client_secret,
    )

    async def register_callback(relay: Relay) -> None:
        idp.redirect_uri = relay.config.account_origin + "/signin/oidc/idp/callback"

    return {"oidc_providers": (provider,), "before_addon": register_callback}


@pytest.fixture
async def idp() -> AsyncIterator[StandInIdp]:
    async with stand_in_idp() as provider:
        yield provider


@pytest.fixture
def stack_options(idp: StandInIdp) -> dict[str, Any]:
    return oidc_options(idp)


def _cookie(browser: Browser, name: str) -> str | None:
    for cookie in browser.session.cookie_jar:
        if cookie.key == name:
            return cookie.value
    return None


async def _signin(browser: Browser, next_path: str = "/") -> Walk:
    url = URL(browser.stack.account_origin + "/signin/oidc/idp").with_query(next=next_path)
    return await walk(browser.session, str(url))


async def _link_owner(stack: Stack, idp: StandInIdp) -> None:
    """Link the provider's user to the stack's owner (as an earlier sign-in would have)."""
    owner = await stack.relay.accounts.get_user_by_email(stack.email)
    assert owner is not None
    identity = VerifiedIdentity(idp.issuer, idp.user.sub, stack.email, True)
    await stack.relay.accounts.oidc.link(owner.id, "idp", identity)


async def _identities(stack: Stack) -> list[OidcIdentity]:
    async with stack.relay.database.session() as s:
        return list(await s.scalars(select(OidcIdentity)))


async def _user(stack: Stack, email: str) -> User | None:
    return await stack.relay.accounts.get_user_by_email(email)


async def test_first_signin_creates_an_account_and_the_next_one_finds_it(
    stack: Stack, idp: StandInIdp
) -> None:
    idp.user.email = "newcomer@example.com"
    async with stack.browser() as browser:
        page = await _signin(browser)
        assert page.status == 200, page.text
        assert page.url.path == "/"
        assert "newcomer@example.com" in page.text  # the home page of the new account
        assert _cookie(browser, ACCOUNT_COOKIE)
        # The binding cookie is spent once the flow is finished.
        assert not _cookie(browser, BINDING_COOKIE)
        # Nothing secret in any URL we produced (R-SES-08): no code on our own hosts.
        relay_urls = [u for u in page.visited if u.host == stack.config.account_host]
        assert all(
            "code" not in u.query for u in relay_urls if u.path != "/signin/oidc/idp/callback"
        )
    user = await _user(stack, "newcomer@example.com")
    assert user is not None
    assert user.has_password is False
    # The made-up password hash never matches anything typed.
    assert await stack.relay.accounts.authenticate("newcomer@example.com", "") is None
    [identity] = await _identities(stack)
    assert (identity.issuer, identity.subject, identity.user_id) == (
        idp.issuer,
        idp.user.sub,
        user.id,
    )
    # Next time: the same (issuer, sub) even with another email at the provider.
    idp.user.email = "renamed@example.com"
    async with stack.browser() as browser:
        page = await _signin(browser)
        assert page.status == 200
        assert "newcomer@example.com" in page.text
    assert await _user(stack, "renamed@example.com") is None


async def test_state_tampered_and_callback_replayed_are_refused(
    stack: Stack, idp: StandInIdp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    callback: list[URL] = []

    def at_callback(url: URL) -> bool:
        if url.path.endswith("/callback"):
            callback.append(url)
            return True
        return False

    async with stack.browser() as browser:
        start = stack.account_origin + "/signin/oidc/idp"
        await walk(browser.session, start, stop=at_callback)
        good = callback[-1]
        # Another state than the flow's: refused, and the real one still works.
        forged = good.update_query(state="x" * 43)
        async with browser.request("GET", str(forged)) as r:
            assert r.status == 400
        async with browser.request("GET", str(good)) as r:
            assert r.status == 303
            finish = URL(r.headers["Location"])
            assert finish.path == "/signin/oidc/finish"
            assert set(finish.query) == {"ticket"}
        # The same callback again: the state is used up.
        async with browser.request("GET", str(good)) as r:
            assert r.status == 400
        # The finish step needs the ticket.
        async with browser.request("GET", stack.account_origin + "/signin/oidc/finish") as r:
            assert r.status == 400
        page = await walk(browser.session, stack.account_origin + str(finish))
        assert page.status == 200
        assert page.url.path == "/"
        # The finish step is single use too.
        async with browser.request("GET", stack.account_origin + str(finish)) as r:
            assert r.status == 400
    assert len(idp.token_requests) == 1  # the replay never reached the provider
    # Failures and successes were logged, as metadata only: no state, code or token.
    events = {r.getMessage() for r in caplog.records}
    assert {"oidc.callback_failed", "account.signin"} <= events
    secrets_seen = [
        good.query["state"],
        good.query["code"],
        finish.query["ticket"],
        idp.token_requests[0]["code_verifier"],
        *idp.issued,
    ]
    logged = caplog.text + "".join(repr(vars(r)) for r in caplog.records)
    for secret in secrets_seen:
        assert secret not in logged


async def test_callback_in_another_browser_cannot_finish(stack: Stack, idp: StandInIdp) -> None:
    """Login CSRF / a leaked callback: the binding cookie is missing there.

    The cookie is checked at the callback itself: the flow is used up, no code is
    redeemed, and the browser that started it cannot finish it afterwards either.
    (The two-browser swap, with separate networks and Apple's form_post, is in
    ``test_oidc_swap.py``.)
    """
    callback: list[URL] = []

    def at_callback(url: URL) -> bool:
        if url.path.endswith("/callback"):
            callback.append(url)
            return True
        return False

    async with stack.browser() as victim, stack.browser() as attacker:
        await walk(attacker.session, stack.account_origin + "/signin/oidc/idp", stop=at_callback)
        assert _cookie(attacker, BINDING_COOKIE)
        page = await walk(victim.session, str(callback[-1]))
        assert page.status == 400
        assert page.url.path == "/signin/oidc/idp/callback"
        assert not _cookie(victim, ACCOUNT_COOKIE)
        assert idp.token_requests == []
        async with attacker.request("GET", str(callback[-1])) as r:
            assert r.status == 400  # used up
        assert not _cookie(attacker, ACCOUNT_COOKIE)
        # A made-up binding cookie does not help either.
        victim.session.cookie_jar.update_cookies(
            {BINDING_COOKIE: "y" * 43}, URL(stack.account_origin)
        )
        async with victim.request("GET", stack.account_origin + "/signin/oidc/finish") as r:
            assert r.status == 400
        assert not _cookie(victim, ACCOUNT_COOKIE)


async def test_wrong_pkce_verifier_is_refused_by_the_provider(
    stack: Stack, idp: StandInIdp
) -> None:
    relay = stack.relay

    def at_provider(url: URL) -> bool:
        return url.path == "/authorize"

    async with stack.browser() as browser:
        stopped = await walk(
            browser.session, stack.account_origin + "/signin/oidc/idp", stop=at_provider
        )
        state = stopped.url.query["state"]
        state_hash = hashlib.sha256(state.encode()).hexdigest()
        binding = _cookie(browser, BINDING_COOKIE)
        assert binding is not None
        binding_hash = hashlib.sha256(binding.encode()).hexdigest()
        aad = f"homeport-oidc-verifier:{state_hash}:{binding_hash}".encode()
        async with relay.database.session(write=True) as s, s.begin():
            await s.execute(
                update(OidcFlow)
                .where(OidcFlow.state_hash == state_hash)
                .values(verifier_sealed=relay.secret_box.seal(b"w" * 64, aad))
            )
        page = await walk(browser.session, str(stopped.url))
        assert page.status == 400
        assert not _cookie(browser, ACCOUNT_COOKIE)
    assert idp.token_errors == ["pkce"]


def _hs256_with_public_key(idp: StandInIdp) -> Any:
    def sign(header: dict[str, Any], claims: dict[str, Any]) -> str:
        import base64
        import hmac

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).decode().rstrip("=")

        head = b64(json.dumps({**header, "alg": "HS256"}).encode())
        body = b64(json.dumps(claims).encode())
        secret = idp.key.as_pem(private=False)
        mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64(mac)}"

    return sign


def _alg_none(header: dict[str, Any], claims: dict[str, Any]) -> str:
    import base64

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    return (
        f"{b64(json.dumps({**header, 'alg': 'none'}).encode())}.{b64(json.dumps(claims).encode())}."
    )


def _other_key(kid: str) -> Any:
    key = RSAKey.generate_key(2048)

    def sign(header: dict[str, Any], claims: dict[str, Any]) -> str:
        return jwt.encode({**header, "kid": kid}, claims, key, algorithms=["RS256"])

    return sign


async def test_every_id_token_check_holds_through_the_relay(stack: Stack, idp: StandInIdp) -> None:
    cases: list[tuple[str, dict[str, Any], Any]] = [
        ("nonce mismatch", {"nonce": "not-the-flows-nonce"}, None),
        ("expired", {"exp": int(time.time()) - 300, "iat": int(time.time()) - 400}, None),
        ("wrong aud", {"aud": "another-client"}, None),
        ("wrong iss", {"iss": "http://127.0.0.1:1"}, None),
        ("alg none", {}, _alg_none),
        ("HS256 with the public key", {}, _hs256_with_public_key(idp)),
        ("bad signature", {}, _other_key("idp-key-1")),
        ("unknown kid", {}, _other_key("nobody-knows-me")),
    ]
    for name, patch, signer in cases:
        idp.claims_patch, idp.signer = patch, signer
        async with stack.browser() as browser:
            page = await _signin(browser)
            assert page.status == 400, name
            assert "could not be completed" in page.text, name
            assert not _cookie(browser, ACCOUNT_COOKIE), name
    assert await _identities(stack) == []
    assert await _user(stack, "person@example.com") is None
    # And with nothing tampered the same provider works.
    idp.claims_patch, idp.signer = {}, None
    async with stack.browser() as browser:
        assert (await _signin(browser)).status == 200
        assert _cookie(browser, ACCOUNT_COOKIE)


async def test_discovery_naming_another_issuer_is_refused(tmp_path: Path, idp: StandInIdp) -> None:
    idp.discovery_issuer = idp.issuer + "/other"
    async with (
        start_stack(tmp_path, **oidc_options(idp)) as stack,
        stack.browser() as browser,
        browser.request("GET", stack.account_origin + "/signin/oidc/idp") as r,
    ):
        assert r.status == 503
        assert "cannot be reached" in await r.text()
    assert idp.codes == {}  # the browser was never sent to the provider


async def test_next_to_another_site_is_ignored(stack: Stack, idp: StandInIdp) -> None:
    async with stack.browser() as browser:
        page = await _signin(browser, next_path="https://evil.example/")
        assert page.url.host == stack.config.account_host
        assert page.url.path == "/"
        assert all(u.host != "evil.example" for u in page.visited)
    # An own path is honoured: straight on to the home through the hand-off.
    idp.user.sub = "the-owner"
    await _link_owner(stack, idp)
    async with stack.browser() as browser:
        page = await walk(browser.session, stack.tenant_origin + "/", headers=_NAV)
        assert page.url.path == "/signin"
        signin = page.url.query.get("next", "/")
        page = await _signin(browser, next_path=signin)
        assert page.status == 200
        assert page.url.host == URL(stack.tenant_origin).host


_NAV = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}


async def test_existing_email_is_not_linked_until_the_account_is_signed_in_to(
    stack: Stack, idp: StandInIdp
) -> None:
    idp.user.email = stack.email  # the stack's password account
    owner = await _user(stack, stack.email)
    assert owner is not None
    async with stack.browser() as browser:
        page = await _signin(browser)
        assert page.status == 200
        assert page.url.path == "/signin/oidc/finish"
        assert "already exists" in page.text
        assert not _cookie(browser, ACCOUNT_COOKIE)
        assert await _identities(stack) == []
        # Confirming without signing in goes to the sign-in page, links nothing.
        async with browser.request(
            "POST",
            stack.account_origin + "/signin/oidc/link",
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 303
            assert r.headers["Location"].startswith("/signin?")
        assert await _identities(stack) == []
        # A wrong password does not link either.
        async with browser.request(
            "POST",
            stack.account_origin + "/signin",
            data={"email": stack.email, "password": "wrong password 123456", "next": "/"},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 401
        # The owner signs in with the password, then confirms.
        async with browser.request(
            "POST",
            stack.account_origin + "/signin",
            data={"email": stack.email, "password": PASSWORD, "next": "/signin/oidc/link"},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/signin/oidc/link"
        async with browser.request("GET", stack.account_origin + "/signin/oidc/link") as r:
            assert r.status == 200
            assert "Link Test IdP" in await r.text()
        # Cross-site confirmation is refused.
        async with browser.request(
            "POST",
            stack.account_origin + "/signin/oidc/link",
            headers={"Origin": "https://evil.example"},
        ) as r:
            assert r.status == 403
        async with browser.request(
            "POST",
            stack.account_origin + "/signin/oidc/link",
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 303
            assert r.headers["Location"].startswith("/security/signin-methods")
    [identity] = await _identities(stack)
    assert identity.user_id == owner.id
    # From now on the provider signs in to the password account.
    async with stack.browser() as browser:
        page = await _signin(browser)
        assert page.url.path == "/"
        assert stack.email in page.text


async def test_an_older_session_cannot_confirm_a_held_link(stack: Stack, idp: StandInIdp) -> None:
    """The link needs a sign-in made *after* the identity was held."""
    idp.user.email = stack.email
    async with stack.browser() as browser:
        async with browser.request(
            "POST",
            stack.account_origin + "/signin",
            data={"email": stack.email, "password": PASSWORD, "next": "/"},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 303
        # Signed in already; a signed-in person's browser starting a sign-in is held too.
        page = await _signin(browser)
        assert "already exists" in page.text
        async with browser.request(
            "POST",
            stack.account_origin + "/signin/oidc/link",
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 403
    assert await _identities(stack) == []


async def _enable_totp(stack: Stack, user_id: int) -> pyotp.TOTP:
    totp = stack.relay.accounts.totp
    enrolment = await totp.start_enrolment(user_id, stack.email)
    otp = pyotp.TOTP(enrolment.secret_base32)
    outcome, _codes = await totp.confirm_enrolment(user_id, otp.now(), ip="127.0.0.1")
    assert outcome.ok
    return otp


async def test_provider_signin_still_asks_for_the_accounts_totp(
    stack: Stack, idp: StandInIdp
) -> None:
    owner = await _user(stack, stack.email)
    assert owner is not None
    await _link_owner(stack, idp)
    otp = await _enable_totp(stack, owner.id)
    async with stack.browser() as browser:
        page = await _signin(browser, next_path="/security")
        assert page.url.path == "/signin/totp"
        assert not _cookie(browser, ACCOUNT_COOKIE)
        assert _cookie(browser, PENDING_COOKIE)
        async with browser.request(
            "POST",
            stack.account_origin + "/signin/totp",
            data={"code": otp.at(time.time() + 30)},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 303
            assert r.headers["Location"] == "/security"
        assert _cookie(browser, ACCOUNT_COOKIE)


async def test_failed_callbacks_are_throttled_per_network(stack: Stack, idp: StandInIdp) -> None:
    async with stack.browser() as browser:
        url = stack.account_origin + "/signin/oidc/idp/callback?state=nope&code=nope"
        statuses = []
        for _ in range(21):
            async with browser.request("GET", url) as r:
                statuses.append(r.status)
                retry = r.headers.get("Retry-After")
        assert statuses[:20] == [400] * 20
        assert statuses[20] == 429
        assert retry is not None
        assert int(retry) > 0
        # A real sign-in from the same network is refused too until the window ends.
        page = await _signin(browser)
        assert page.status == 429


async def test_link_and_unlink_from_the_settings_page(stack: Stack, idp: StandInIdp) -> None:
    idp.user.email = "work-address@example.org"  # another address than the account's
    same_site = {"Sec-Fetch-Site": "same-origin"}
    methods = stack.account_origin + "/security/signin-methods"
    async with stack.browser() as browser:
        async with browser.request(
            "POST",
            stack.account_origin + "/signin",
            data={"email": stack.email, "password": PASSWORD, "next": "/"},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 303
        link = stack.account_origin + "/security/oidc/idp/link"
        # Started from another site: refused.
        async with browser.request("GET", link, headers={"Sec-Fetch-Site": "cross-site"}) as r:
            assert r.status == 403
        page = await walk(browser.session, link, headers=same_site)
        # Nothing is linked before the person has seen which identity came back.
        assert page.status == 200, page.text
        assert page.url.path == "/security/oidc/confirm"
        assert "Link Test IdP?" in page.text
        assert "work-address@example.org" in page.text
        assert idp.user.sub in page.text
        assert stack.email in page.text
        assert await _identities(stack) == []
        confirm = stack.account_origin + "/security/oidc/confirm"
        # Cross-site, or from another browser of the same account: nothing.
        async with browser.request(
            "POST", confirm, headers={"Origin": "https://evil.example"}
        ) as r:
            assert r.status == 403
        async with stack.browser() as other:
            await other.sign_in_account_site()
            async with other.request("GET", confirm) as r:
                assert r.status == 400
            async with other.request(
                "POST", confirm, headers={"Origin": stack.account_origin}
            ) as r:
                assert r.status == 400
        assert await _identities(stack) == []
        async with browser.request("POST", confirm, headers={"Origin": stack.account_origin}) as r:
            assert r.status == 303
            assert r.headers["Location"].startswith("/security/signin-methods?")
        assert not _cookie(browser, BINDING_COOKIE)  # spent
        async with browser.request("GET", methods + "?linked=Test+IdP") as r:
            text = await r.text()
        assert "Test IdP is now linked" in text
        assert "work-address@example.org" in text
        # Once linked, the confirmation cannot be replayed.
        async with browser.request("POST", confirm, headers={"Origin": stack.account_origin}) as r:
            assert r.status == 400
        [identity] = await _identities(stack)
        # Unlink: cross-site refused, then done.
        form = {"identity": str(identity.id)}
        async with browser.request(
            "POST",
            stack.account_origin + "/security/oidc/unlink",
            data=form,
            headers={"Origin": "https://evil.example"},
        ) as r:
            assert r.status == 403
        async with browser.request(
            "POST",
            stack.account_origin + "/security/oidc/unlink",
            data=form,
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 303
        assert await _identities(stack) == []
        async with browser.request("GET", methods) as r:
            assert "Link Test IdP" in await r.text()


async def test_the_only_way_in_cannot_be_unlinked(stack: Stack, idp: StandInIdp) -> None:
    idp.user.email = "only-provider@example.com"
    async with stack.browser() as browser:
        assert (await _signin(browser)).status == 200
        [identity] = await _identities(stack)
        async with browser.request(
            "POST",
            stack.account_origin + "/security/oidc/unlink",
            data={"identity": str(identity.id)},
            headers={"Origin": stack.account_origin},
        ) as r:
            assert r.status == 409
            assert "only way to sign in" in await r.text()
    assert len(await _identities(stack)) == 1


async def test_unverified_email_makes_no_account(stack: Stack, idp: StandInIdp) -> None:
    idp.user.email, idp.user.email_verified = "unverified@example.com", "false"
    async with stack.browser() as browser:
        page = await _signin(browser)
        assert page.status == 400
        assert "did not confirm an email" in page.text
    assert await _user(stack, "unverified@example.com") is None
    # Nor may an unverified address reach an existing account.
    idp.user.email = stack.email
    async with stack.browser() as browser:
        page = await _signin(browser)
        assert page.status == 400
        assert not _cookie(browser, ACCOUNT_COOKIE)


async def test_signin_page_shows_only_configured_providers(stack: Stack) -> None:
    async with stack.browser() as browser:
        async with browser.request("GET", stack.account_origin + "/signin") as r:
            text = await r.text()
        assert "Sign in with Test IdP" in text
        assert "Sign in with Google" not in text
        assert "Sign in with Apple" not in text
        async with browser.request("GET", stack.account_origin + "/signin/oidc/google") as r:
            assert r.status == 404


async def test_key_rotation_refetches_the_jwks_but_not_for_every_unknown_kid(
    stack: Stack, idp: StandInIdp
) -> None:
    client = stack.relay.oidc.clients["idp"]
    async with stack.browser() as browser:
        assert (await _signin(browser)).status == 200
    assert idp.jwks_hits == 1
    # Forged kids right after a fetch do not make the relay hammer the provider.
    idp.signer = _other_key("forged-kid")
    for _ in range(3):
        async with stack.browser() as browser:
            assert (await _signin(browser)).status == 400
    assert idp.jwks_hits == 1
    # The provider rotates to a new key; once the minute is over it is fetched and used.
    idp.signer = None
    idp.key = RSAKey.generate_key(2048, parameters={"kid": "idp-key-2", "use": "sig"})
    client._keys_at -= 61
    idp.signer = lambda header, claims: jwt.encode(
        {**header, "kid": "idp-key-2"}, claims, idp.key, algorithms=["RS256"]
    )
    async with stack.browser() as browser:
        assert (await _signin(browser)).status == 200
    assert idp.jwks_hits == 2


async def test_provider_error_or_cancel_is_refused_and_kills_the_flow(
    stack: Stack, idp: StandInIdp
) -> None:
    def at_callback(url: URL) -> bool:
        return url.path.endswith("/callback")

    async with stack.browser() as browser:
        stopped = await walk(
            browser.session, stack.account_origin + "/signin/oidc/idp", stop=at_callback
        )
        cancelled = stopped.url.with_query(state=stopped.url.query["state"], error="access_denied")
        async with browser.request("GET", str(cancelled)) as r:
            assert r.status == 400
        # The flow is dead: the real code cannot be used afterwards.
        async with browser.request("GET", str(stopped.url)) as r:
            assert r.status == 400
    assert idp.token_requests == []


async def test_binding_cookie_is_a_host_cookie_and_the_start_names_the_exact_redirect(
    stack: Stack, idp: StandInIdp
) -> None:
    async with (
        stack.browser() as browser,
        browser.request("GET", stack.account_origin + "/signin/oidc/idp") as r,
    ):
        assert r.status == 303
        cookie = r.headers["Set-Cookie"]
        location = URL(r.headers["Location"])
    assert cookie.startswith(BINDING_COOKIE + "=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"secure", "httponly", "path", "samesite", "max-age"} <= attributes
    assert "domain" not in attributes
    assert "SameSite=Lax" in cookie
    assert "Path=/" in cookie
    assert "Max-Age=600" in cookie
    query = location.query
    assert query["redirect_uri"] == idp.redirect_uri
    assert query["code_challenge_method"] == "S256"
    assert query["response_type"] == "code"
    assert set(query["scope"].split()) == {"openid", "email"}
    assert len(query["state"]) >= 43
    assert len(query["nonce"]) >= 43
    assert query["state"] != query["nonce"]


async def test_a_disabled_account_cannot_sign_in_with_its_provider(
    stack: Stack, idp: StandInIdp
) -> None:
    await _link_owner(stack, idp)
    owner = await _user(stack, stack.email)
    assert owner is not None
    await stack.relay.accounts.set_user_disabled(owner.id, True)
    async with stack.browser() as browser:
        page = await _signin(browser)
        assert page.status == 403
        assert not _cookie(browser, ACCOUNT_COOKIE)


async def test_provider_signin_from_a_new_network_still_asks_for_the_mailed_code(
    tmp_path: Path, idp: StandInIdp
) -> None:
    """R-OIDC-05: a provider sign-in goes through the same new-network step-up as a password."""
    with SmtpSink() as sink:
        smtp = SmtpSettings(
            host="127.0.0.1", port=sink.port, security="none", mail_from="relay@example.com"
        )
        async with start_stack(tmp_path, **oidc_options(idp), smtp=smtp) as stack:
            await _link_owner(stack, idp)
            async with stack.browser() as browser:
                page = await _signin(browser)
                assert page.url.path == "/signin/email-code", page.text
                assert not _cookie(browser, ACCOUNT_COOKIE)  # no session before the code
                mail = await sink.wait_for(stack.email)
                async with browser.request(
                    "POST",
                    stack.account_origin + "/signin/email-code",
                    data={"code": mail.code()},
                    headers={"Origin": stack.account_origin},
                ) as r:
                    assert r.status == 303, await r.text()
                assert _cookie(browser, ACCOUNT_COOKIE)
