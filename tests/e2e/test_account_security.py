"""End to end: password change, audit page and CSV, TOTP QR / off / new codes, CSRF, URLs.

Real relay, real add-on, real TLS on loopback.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import re

import aiohttp
import pyotp
import pytest
from sqlalchemy import select
from stack import Browser, Stack
from traffic import OpenTraffic
from yarl import URL

from homeport.accounts.models import AuditEvent
from homeport.accounts.totp import ISSUER
from homeport.relay.live import SESSION_ENDED_CODE
from homeport.relay.site.security import qr_data_uri
from homeport.relay.site.signin_flow import ACCOUNT_COOKIE
from homeport.relay.tenant import SESSION_COOKIE

pytestmark = [pytest.mark.timeout(180), pytest.mark.stack(housekeeping=False)]

NEW_PASSWORD = "seven purple otters under a bridge"


async def _post(
    browser: Browser, path: str, data: dict[str, str], origin: str | None = ""
) -> tuple[int, str]:
    headers = {}
    if origin is not None:
        headers["Origin"] = origin or browser.stack.account_origin
    async with browser.request(
        "POST", browser.stack.account_origin + path, data=data, headers=headers
    ) as r:
        return r.status, await r.text()


async def _get(browser: Browser, path: str) -> tuple[int, str]:
    async with browser.request("GET", browser.stack.account_origin + path) as r:
        return r.status, await r.text()


async def _codes_after(browser: Browser, path: str, data: dict[str, str]) -> tuple[list[str], str]:
    """POST ``path``; the recovery codes on the page its redirect leads to, and that address."""
    async with browser.request(
        "POST",
        browser.stack.account_origin + path,
        data=data,
        headers={"Origin": browser.stack.account_origin},
    ) as r:
        assert r.status == 303, await r.text()
        shown = r.headers["Location"]
    assert shown.startswith("/security/recovery-codes?shown=")
    status, page = await _get(browser, shown)
    assert status == 200
    return re.findall(r"<li><code>([^<]+)</code></li>", page), shown


async def _user_id(stack: Stack) -> int:
    user = await stack.relay.accounts.get_user_by_email(stack.email)
    assert user is not None
    return user.id


async def _audit_kinds(stack: Stack) -> list[str]:
    events, _ = await stack.relay.accounts.audit.page(await _user_id(stack), per_page=500)
    return [e.kind for e in events]


async def test_password_change(stack: Stack) -> None:
    async with stack.browser() as phone, stack.browser() as laptop:
        assert (await phone.sign_in("/")).status == 200
        await laptop.sign_in_account_site()
        traffic = OpenTraffic(phone)
        try:
            await traffic.open()
            form = {"current_password": "not my password at all", "new_password": NEW_PASSWORD}
            form["new_password_again"] = NEW_PASSWORD
            status, body = await _post(laptop, "/security/password", form)
            assert (status, "current password is not right" in body) == (401, True)
            assert traffic.still_open()

            form["current_password"] = stack.password
            for weak in ("password1234567", "qwertyuiop12345"):
                status, body = await _post(
                    laptop,
                    "/security/password",
                    {**form, "new_password": weak, "new_password_again": weak},
                )
                assert status == 400
                assert "common" in body
            status, body = await _post(
                laptop, "/security/password", {**form, "new_password_again": NEW_PASSWORD + "x"}
            )
            assert (status, "differ" in body) == (400, True)
            assert traffic.still_open()

            status, body = await _post(laptop, "/security/password", form)
            assert status == 200
            assert "Your password is changed" in body
            assert (await traffic.ended(5.0)).data == SESSION_ENDED_CODE
            async with phone.request("GET", stack.tenant_origin + "/") as r:
                assert r.status == 401
            assert (await _get(laptop, "/security/sessions"))[0] == 200  # kept
        finally:
            await traffic.close()
    accounts = stack.relay.accounts
    assert await accounts.authenticate(stack.email, stack.password) is None
    assert await accounts.authenticate(stack.email, NEW_PASSWORD) is not None
    kinds = await _audit_kinds(stack)
    assert "password.changed" in kinds
    assert "password.change_failed" in kinds


async def test_audit_page_and_csv(stack: Stack) -> None:
    async with stack.browser() as stranger:
        assert (await _get(stranger, "/security/audit"))[0] == 303
        async with stranger.request("GET", stack.account_origin + "/security/audit.csv") as r:
            assert r.status == 303
        status, _ = await _post(
            stranger, "/signin", {"email": stack.email, "password": "=cmd|' /C calc'!A0"}
        )
        assert status == 401
        status, _ = await _post(
            stranger, "/signin", {"email": "nobody@example.com", "password": "x" * 20}
        )
        assert status == 401
    async with stack.relay.database.session() as s:
        orphans = list(await s.scalars(select(AuditEvent).where(AuditEvent.user_id.is_(None))))
    assert [(e.kind, e.ip) for e in orphans] == [("signin.failed", "127.0.0.1")]
    assert "nobody" not in repr([vars(e) for e in orphans])  # the typed address is not kept
    async with stack.browser() as browser:
        browser.session.headers["User-Agent"] = "=HYPERLINK(1) Firefox/133.0 (Windows)"
        assert (await browser.sign_in("/")).status == 200
        status, page = await _get(browser, "/security/audit")
        assert status == 200
        for label in ("Signed in", "Failed sign-in", "New session", "Home linked"):
            assert label in page
        assert "=cmd" not in page  # the attempted password is never recorded
        async with browser.request("GET", stack.account_origin + "/security/audit.csv") as r:
            assert r.status == 200
            assert r.content_type == "text/csv"
            assert r.headers["Content-Disposition"].startswith("attachment;")
            assert r.headers["Cache-Control"] == "no-store"
            text = await r.text()
        rows = list(csv.DictReader(io.StringIO(text)))
        kinds = {row["type"] for row in rows}
        assert {"signin.failed", "signin.succeeded", "session.created"} <= kinds
        assert all(row["ip"] == "127.0.0.1" for row in rows if row["type"].startswith("signin"))
        assert "=cmd" not in text
        assert not any(
            cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values()
        )
        status, only = await _get(browser, f"/security/audit?home={stack.instance_id}")
        assert status == 200
        assert "Only events on" in only
        assert "Failed sign-in" not in only  # account events are not on the home
        assert "New session" in only
        status, page = await _get(browser, "/security/audit?home=someone-elses")
        assert (status, "Only events on" in page) == (200, False)
        # Paging links stay local and carry nothing but a page number.
        assert (await _get(browser, "/security/audit?page=abc"))[0] == 200
        assert (await _get(browser, "/security/audit?page=99999999"))[0] == 200


async def test_totp_qr_code_then_new_codes_and_turn_off(stack: Stack) -> None:
    accounts = stack.relay.accounts
    async with stack.browser() as browser:
        await browser.sign_in_account_site()
        status, _ = await _post(browser, "/security/totp/start", {})
        assert status == 303  # post/redirect/get: a reload starts nothing new
        status, page = await _get(browser, "/security/totp")
        assert status == 200
        match = re.search(r'<img class="qr" src="data:image/png;base64,([\w+/=]+)"', page)
        assert match is not None
        assert base64.b64decode(match.group(1)).startswith(b"\x89PNG\r\n\x1a\n")
        secret = re.search(r'<span id="totp-key-plain" hidden>([A-Z2-7]+)</span>', page)
        assert secret is not None
        # The key for typing by hand, in groups of four.
        groups = re.search(r'<code id="totp-key" class="key-groups"[^>]*>([A-Z2-7 ]+)</code>', page)
        assert groups is not None
        assert groups.group(1).split() == re.findall(".{1,4}", secret.group(1))
        totp = pyotp.TOTP(secret.group(1))
        # The QR code is exactly the otpauth URI of this seed, drawn locally.
        uri = totp.provisioning_uri(name=stack.email, issuer_name=ISSUER)
        assert f'src="{qr_data_uri(uri)}"' in page
        first_codes, shown = await _codes_after(
            browser, "/security/totp/confirm", {"code": totp.now()}
        )
        assert len(first_codes) == 10
        # Shown once: the same address again shows no codes.
        status, page = await _get(browser, shown)
        assert status == 410
        assert first_codes[0] not in page

        # New recovery codes: only after proving it is the person again, on their own page.
        status, page = await _get(browser, "/security/recovery-codes/new")
        assert status == 200
        assert page.count('name="password"') == 1  # one form for one action
        assert (await _post(browser, "/security/recovery-codes", {}))[0] == 401
        wrong = {"password": "wrong wrong wrong wrong"}
        status, page = await _post(browser, "/security/recovery-codes", wrong)
        assert status == 401
        assert 'aria-invalid="true"' in page
        new_codes, _ = await _codes_after(
            browser, "/security/recovery-codes", {"password": stack.password}
        )
        assert len(new_codes) == 10
        assert not set(new_codes) & set(first_codes)
        user_id = await _user_id(stack)
        assert not (await accounts.totp.use_recovery_code(user_id, first_codes[0], ip="x")).ok
        assert await accounts.totp.recovery_codes_left(user_id) == 10

        # Off: a wrong code is refused, a recovery code is not a "current code".
        assert (await _post(browser, "/security/totp/disable", {"code": "000000"}))[0] == 401
        assert await accounts.totp.is_enabled(user_id)
        status, page = await _get(browser, "/security/totp/disable")
        assert status == 200
        assert 'class="danger"' in page
        status, _ = await _post(browser, "/security/totp/disable", {"password": stack.password})
        assert status == 303
        assert not await accounts.totp.is_enabled(user_id)
    kinds = await _audit_kinds(stack)
    for kind in (
        "factor.totp_enabled",
        "factor.recovery_codes_regenerated",
        "factor.totp_disabled",
    ):
        assert kind in kinds


STATE_CHANGING = [
    ("/signin", {"email": "owner@example.com", "password": "correct horse battery staple 42"}),
    ("/signin/totp", {"code": "123456"}),
    ("/signout", {}),
    ("/security/totp/start", {}),
    ("/security/totp/confirm", {"code": "123456"}),
    ("/security/totp/disable", {"password": "correct horse battery staple 42"}),
    ("/security/recovery-codes", {"password": "correct horse battery staple 42"}),
    ("/security/sessions/end", {"session": "1"}),
    ("/security/sessions/end-others", {}),
    (
        "/security/password",
        {
            "current_password": "correct horse battery staple 42",
            "new_password": NEW_PASSWORD,
            "new_password_again": NEW_PASSWORD,
        },
    ),
]


async def _snapshot(stack: Stack) -> tuple[object, ...]:
    accounts = stack.relay.accounts
    user_id = await _user_id(stack)
    user = await accounts.get_user(user_id)
    assert user is not None
    return (
        sorted(s.id for s in await accounts.list_sessions(user_id)),
        user.password_hash,
        await accounts.totp.is_enabled(user_id),
        await accounts.totp.enrolment_secret(user_id),
        await _audit_kinds(stack),
    )


async def test_csrf_every_state_changing_route_refuses_other_origins(stack: Stack) -> None:
    async with stack.browser() as browser, stack.browser() as phone:
        assert (await phone.sign_in("/")).status == 200
        await browser.sign_in_account_site()
        before = await _snapshot(stack)
        for path, form in STATE_CHANGING:
            for origin in ("https://evil.example", stack.tenant_origin, "null", None):
                status, _ = await _post(browser, path, form, origin=origin)
                assert status == 403, (path, origin)
        assert await _snapshot(stack) == before  # nothing changed at all
        assert (await _get(browser, "/security/sessions"))[0] == 200
        async with phone.request("GET", stack.tenant_origin + "/") as r:
            assert r.status == 200


async def _walk_sign_in(browser: Browser) -> list[aiohttp.ClientResponse]:
    """Open the home, sign in when sent to, follow every redirect; each response in order."""
    stack = browser.stack
    seen: list[aiohttp.ClientResponse] = []
    url = stack.tenant_origin + "/"
    navigate = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate"}
    for _ in range(10):
        async with browser.request("GET", url, headers=navigate) as r:
            seen.append(r)
            if r.status != 303:
                assert r.status == 200
                return seen
            location = r.url.join(URL(r.headers["Location"]))
        if location.path == "/signin":
            async with browser.request(
                "POST",
                str(location.with_query(None)),
                data={
                    "email": stack.email,
                    "password": stack.password,
                    "next": location.query.get("next", "/"),
                },
                headers={"Origin": stack.account_origin},
            ) as r:
                assert r.status == 303
                seen.append(r)
                location = r.url.join(URL(r.headers["Location"]))
        url = str(location)
    raise AssertionError("sign-in did not finish in 10 redirects")


async def test_no_token_in_any_url_or_log_line(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """R-SES-08: only the single-use hand-off code is ever in a URL, and a redirect drops it."""
    urls: list[str] = []
    async with stack.browser() as browser:
        with caplog.at_level(logging.DEBUG):
            urls += [str(r.url) for r in await _walk_sign_in(browser)]
            for path in ("/", "/security", "/security/sessions", "/security/audit"):
                status, page = await _get(browser, path)
                assert status == 200
                urls += re.findall(r'(?:href|action|src)="([^"]+)"', page)
        cookies = {c.key: c.value for c in browser.session.cookie_jar}
    secrets_ = [cookies[ACCOUNT_COOKIE], cookies[SESSION_COOKIE]]
    assert all(len(s) >= 32 for s in secrets_)
    handoffs = [u for u in urls if "code=" in u]
    assert len(handoffs) == 1
    assert URL(handoffs[0]).path == "/.homeport/handoff"
    after = urls[urls.index(handoffs[0]) + 1]
    assert "code=" not in after  # the redirect took it out of the address bar
    for u in urls:
        for secret in secrets_:
            assert secret not in u
        query = URL(u).query if "://" in u or u.startswith("/") else {}
        assert not {"token", "session", "password"} & set(query)
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    code = URL(handoffs[0]).query["code"]
    for secret in [*secrets_, code, stack.password]:
        assert secret not in logged


def _cookie_attributes(header: str) -> tuple[str, dict[str, str]]:
    name = header.split("=", 1)[0].strip()
    attributes = {}
    for part in header.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        attributes[key.lower()] = value
    return name, attributes


async def test_every_session_cookie_has_host_prefix_flags_and_no_domain(stack: Stack) -> None:
    """R-SES-01: ``__Host-``, Secure, HttpOnly, SameSite=Lax, Path=/, never Domain."""
    seen: dict[str, dict[str, str]] = {}
    async with stack.browser() as browser:
        for response in await _walk_sign_in(browser):
            for header in response.headers.getall("Set-Cookie", []):
                name, attributes = _cookie_attributes(header)
                seen.setdefault(name, attributes)
    assert {ACCOUNT_COOKIE, SESSION_COOKIE, "__Host-homeport_state"} <= set(seen)
    for name, attributes in seen.items():
        assert name.startswith("__Host-"), name
        assert "secure" in attributes, name
        assert "httponly" in attributes, name
        assert attributes.get("samesite", "").lower() == "lax", name
        assert attributes.get("path") == "/", name
        assert "domain" not in attributes, name
