"""The relay checks every proxied response head it writes (``head_is_clean``).

The tunnel's head decoder refuses any field with CR, LF or NUL, so a head that
could split the browser's response never reaches the writer; the writer checks
again, whole head at once.  This test takes the first layer away (the lines
builder is made to let an injected line through) and shows the second one
holds: the browser gets a clean 502, not the injected header, and the next
request is served.
"""

from __future__ import annotations

import pytest
from stack import Stack

from homeport.relay.proxy import exchange as exchange_module
from homeport.relay.proxy.responses import response_lines

pytestmark = pytest.mark.timeout(60)


async def test_an_unclean_head_is_never_written(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def injected(
        names: list[bytes], values: list[bytes]
    ) -> tuple[list[bytes], list[int], bytes | None]:
        lines, lengths, length = response_lines(names, values)
        return [b"x-a: 1\r\nset-cookie: injected=1\r\n", *lines], lengths, length

    async with stack.browser() as browser:
        assert (await browser.sign_in("/")).status == 200
        monkeypatch.setattr(exchange_module, "response_lines", injected)
        async with browser.request("GET", stack.tenant_origin + "/echo") as r:
            assert r.status == 502
            assert "injected" not in str(r.headers)
            assert r.cookies.get("injected") is None
        monkeypatch.undo()
        async with browser.request("GET", stack.tenant_origin + "/echo") as r:
            assert r.status == 200
