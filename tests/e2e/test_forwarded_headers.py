"""End to end: header tricks between the browser and Home Assistant.

* Header names with ``_`` never reach Home Assistant (``relay/headers.py``):
  a backend that maps ``_`` to ``-`` would otherwise read ``x_forwarded_for``
  as the ``X-Forwarded-For`` the relay sets.
* A ``Location`` pointing at Home Assistant's internal address becomes a
  path on the public host, never ``//other.host`` (``addon/forward.py``).

Real relay, add-on and a stand-in backend that records every header block it
receives (the positive control that a header really crossed) and answers
``/headers`` with the response headers it is asked for.
"""

from __future__ import annotations

from header_backend import Seen
from stack import Stack


async def test_header_names_with_underscores_never_reach_home_assistant(
    recorded: tuple[Stack, Seen],
) -> None:
    stack, seen = recorded
    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        seen.clear()
        async with browser.request(
            "GET",
            stack.tenant_origin + "/echo",
            headers={
                "x_forwarded_for": "203.0.113.66",
                "X_Real_IP": "203.0.113.66",
                "Remote_User": "admin",
                "X-Custom": "kept",
            },
        ) as r:
            assert r.status == 200
    [arrived] = seen
    names = [n.lower() for n, _ in arrived]
    assert "x-custom" in names, "the positive control crossed"
    assert [n for n in names if "_" in n] == []
    assert "203.0.113.66" not in str(arrived)
    assert "admin" not in str(arrived)
    assert [v for n, v in arrived if n.lower() == "x-forwarded-for"] == ["127.0.0.1"]


async def test_a_redirect_to_the_internal_address_stays_on_the_public_host(
    recorded: tuple[Stack, Seen],
) -> None:
    stack, _ = recorded
    internal = stack.backend_url
    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        for sent, public in [
            (f"{internal}//evil.example", "/evil.example"),
            (f"{internal}//evil.example/x?y=1", "/evil.example/x?y=1"),
            (f"{internal}/\\evil.example", "/evil.example"),
            (f"{internal}/lovelace/0", "/lovelace/0"),
        ]:
            async with browser.request(
                "GET", stack.tenant_origin + "/headers", params={"h": f"Location:{sent}"}
            ) as r:
                assert r.status == 200
                assert r.headers.getall("Location") == [public], sent
