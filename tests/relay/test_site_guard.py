"""The account site's one guard, checked on every route its router has (real sockets).

The router is walked, not a hand-kept list: a state-changing route added
later is covered the day it is added. Every ``POST`` (``PUT``, ``PATCH``,
``DELETE``) route gets a cross-site request with each kind of wrong
``Origin`` (another site, a tenant host, ``null``, none) and must answer
``403`` with nothing changed in the database; then a same-origin request
with a body one byte over its route's limit must answer ``413``, again with
nothing changed. Only the routes named in ``guard.CROSS_SITE`` are let
through cross-site, and the test checks that they are exactly Apple's
``form_post`` callback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select
from stack import Browser, Stack, start_stack

from homeport.accounts.models import Base
from homeport.relay.site.guard import (
    BODY_LIMITS,
    CROSS_SITE,
    FORM_LIMIT,
    JSON_ROUTES,
    NAVIGATION_ONLY,
    OIDC_FORM_POST,
    STATE_CHANGING,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: A form that would change something on almost any route, were it let through.
EVERYTHING = {
    "email": "someone@example.com",
    "password": "a-long-and-unusual-passphrase-1",
    "current_password": "x",
    "new_password": "another-long-unusual-passphrase-2",
    "new_password_again": "another-long-unusual-passphrase-2",
    "confirm": "yes",
    "required": "yes",
    "name": "Renamed",
    "days": "7",
    "session": "1",
    "id": "1",
    "identity": "1",
    "code": "123456",
    "t": "x" * 43,
    "token": "x" * 43,
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def signed_in(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    """A relay with every optional page on (mail, sign-up), and its owner signed in."""
    root = tmp_path_factory.mktemp("guard")
    async with (
        start_stack(root, dev_console_mail=True, signup=True) as stack,
        stack.browser() as browser,
    ):
        await browser.sign_in_account_site()
        yield browser


def _state_changing(stack: Stack) -> list[tuple[str, str, str | None]]:
    """(method, path with real parameters, route name) of every state-changing route."""
    site = stack.relay.site
    assert site is not None
    params = {"id": stack.instance_id, "inv": "1", "uid": "1", "lid": "1", "provider": "idp"}
    found = []
    for route in site.router.routes():
        if route.method not in STATE_CHANGING:
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info["formatter"].format_map(params)
        found.append((route.method, path, route.name))
    return found


async def _database(stack: Stack) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: what "nothing changed" is checked against."""
    rows = {}
    async with stack.relay.database.session() as s:
        for table in Base.metadata.sorted_tables:
            result = await s.execute(select(table))
            rows[table.name] = sorted((tuple(r) for r in result.all()), key=repr)
    return rows


async def _send(
    browser: Browser, method: str, path: str, name: str | None, *, origin: str | None, size: int
) -> int:
    headers = {} if origin is None else {"Origin": origin}
    if name in JSON_ROUTES:
        headers["Content-Type"] = "application/json"
        body = b'{"password": "x", "pad": "' + b"a" * max(0, size - 27) + b'"}'
    else:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        form = "&".join(f"{k}={v}" for k, v in EVERYTHING.items())
        body = (form + "&pad=" + "a" * max(0, size - len(form) - 5)).encode()
    url = browser.stack.account_origin + path
    async with browser.request(method, url, data=body, headers=headers) as r:
        await r.read()
        return r.status


async def test_the_router_has_the_state_changing_routes_this_test_walks(
    signed_in: Browser,
) -> None:
    routes = _state_changing(signed_in.stack)
    assert len(routes) >= 36, routes
    names = {name for _method, _path, name in routes}
    # Every exemption and special limit names a route that exists (no stale names).
    assert names >= CROSS_SITE | JSON_ROUTES | set(BODY_LIMITS)
    assert {OIDC_FORM_POST} == CROSS_SITE
    site = signed_in.stack.relay.site
    assert site is not None
    gets = {r.name for r in site.router.routes() if r.method == "GET"}
    assert gets >= NAVIGATION_ONLY


@pytest.mark.parametrize("origin", ["https://evil.example", "tenant", "null", None])
async def test_every_state_changing_route_refuses_a_foreign_origin(
    signed_in: Browser, origin: str | None
) -> None:
    stack = signed_in.stack
    sent = stack.tenant_origin if origin == "tenant" else origin
    before = await _database(stack)
    refused = []
    for method, path, name in _state_changing(stack):
        if name in CROSS_SITE:
            continue
        status = await _send(signed_in, method, path, name, origin=sent, size=0)
        assert status == 403, (method, path, sent)
        refused.append(path)
    assert len(refused) >= 35
    assert await _database(stack) == before  # nothing changed at all


async def test_every_state_changing_route_refuses_an_oversized_body(signed_in: Browser) -> None:
    stack = signed_in.stack
    before = await _database(stack)
    for method, path, name in _state_changing(stack):
        limit = BODY_LIMITS.get(name or "", FORM_LIMIT)
        status = await _send(
            signed_in, method, path, name, origin=stack.account_origin, size=limit + 1
        )
        assert status == 413, (method, path, limit)
    assert await _database(stack) == before


async def test_a_link_with_a_provider_starts_only_from_our_own_pages(signed_in: Browser) -> None:
    stack = signed_in.stack
    url = stack.account_origin + "/security/oidc/idp/link"
    for fetch_site in ("cross-site", "same-site", None):
        headers = {} if fetch_site is None else {"Sec-Fetch-Site": fetch_site}
        async with signed_in.request("GET", url, headers=headers) as r:
            assert r.status == 403, fetch_site
    async with signed_in.request("GET", url, headers={"Sec-Fetch-Site": "same-origin"}) as r:
        assert r.status == 404  # let through: no provider called "idp" on this relay
