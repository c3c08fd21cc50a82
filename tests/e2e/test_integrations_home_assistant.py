"""Integrations through the relay against a real Home Assistant Core: Home Assistant is the lock.

A Home Assistant of this module's own (its configuration has a webhook-triggered
automation, a ``local_only`` one, ``google_assistant`` and ``alexa``) behind
the real relay and add-on.  Callers carry no Homeport session:

* a webhook fires its automation when the home's owner turned webhooks on,
  and meets the gate when they are off;
* a ``local_only`` webhook called from a non-local address is ignored by Home
  Assistant, because the relay passes the caller's real address on; the same
  call from a loopback address fires it (the control);
* ``/api/google_assistant`` and ``/api/alexa/smart_home`` answer with a valid
  Home Assistant token and 401 without one; ``/auth/token`` refreshes a token;
  the authorize page stays behind the gate.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from ha_core import HomeAssistant, ensure_ha_venv
from rawhttp import tls_context
from stack import Stack, start_stack

from homeport.accounts.integrations import Switches
from homeport.addon.client import LocalhostResolver

pytestmark = [pytest.mark.homeassistant, pytest.mark.timeout(180)]

OPEN_HOOK = "homeport-hook-open"
LOCAL_HOOK = "homeport-hook-local"
NOTE = "input_text.homeport_note"

EXTRA_CONFIG = f"""
automation:
  - id: homeport_webhook
    alias: Homeport webhook
    triggers:
      - trigger: webhook
        webhook_id: {OPEN_HOOK}
        local_only: false
        allowed_methods: [POST]
    actions:
      - action: input_text.set_value
        target:
          entity_id: {NOTE}
        data:
          value: "{{{{ trigger.json.note }}}}"
  - id: homeport_local_webhook
    alias: Homeport local webhook
    triggers:
      - trigger: webhook
        webhook_id: {LOCAL_HOOK}
        local_only: true
    actions:
      - action: input_text.set_value
        target:
          entity_id: {NOTE}
        data:
          value: "local {{{{ trigger.json.n }}}}"

google_assistant:
  project_id: homeport-test

alexa:
  smart_home:
"""

#: Home Assistant's own idea of "local" (homeassistant/util/network.py): loopback,
#: private and link-local networks.
_HA_LOCAL = [
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "fd00::/8",
        "169.254.0.0/16",
        "fe80::/10",
    )
]


def non_local_source() -> str | None:
    """An address of this machine that Home Assistant does not count as local, if any.

    The kernel's source address for a documentation-range destination (no packet
    is sent: a UDP ``connect`` only picks the route).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))
        except OSError:
            return None
        address = probe.getsockname()[0]
    ip = ipaddress.ip_address(address)
    if any(ip in network for network in _HA_LOCAL):
        return None
    return str(address)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ha(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[HomeAssistant]:
    venv = await asyncio.to_thread(ensure_ha_venv)
    home = await HomeAssistant.start(
        tmp_path_factory.mktemp("ha-integrations"), venv=venv, extra_config=EXTRA_CONFIG
    )
    try:
        yield home
    finally:
        await home.stop()


def caller(stack: Stack, source_ip: str | None = None) -> aiohttp.ClientSession:
    """A service on the internet: no cookies, no Homeport session; from ``source_ip``."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            ssl=tls_context(stack.ca_path),
            resolver=LocalhostResolver(),
            local_addr=(source_ip, 0) if source_ip else None,
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=30),
    )


async def switch(stack: Stack, *, webhooks: bool = False, voice: bool = False) -> None:
    owner = await stack.relay.accounts.get_user_by_email(stack.email)
    assert owner is not None
    await stack.relay.accounts.integrations.set(
        owner.id, stack.instance_id, Switches(webhooks=webhooks, voice=voice)
    )
    stack.relay.integrations.forget(stack.instance_id)


async def state(ha: HomeAssistant, entity_id: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{ha.url}/api/states/{entity_id}", headers=ha.headers) as r,
    ):
        assert r.status == 200
        result: dict[str, Any] = await r.json()
        return result


async def set_note(ha: HomeAssistant, value: str) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{ha.url}/api/services/input_text/set_value",
            headers=ha.headers,
            json={"entity_id": NOTE, "value": value},
        ) as r,
    ):
        assert r.status == 200


async def note_becomes(ha: HomeAssistant, value: str, timeout: float = 10) -> bool:
    async with asyncio.timeout(timeout):
        while (await state(ha, NOTE))["state"] != value:
            await asyncio.sleep(0.1)
    return True


async def note_stays(ha: HomeAssistant, value: str, wait: float = 1.5) -> bool:
    for _ in range(int(wait / 0.1)):
        assert (await state(ha, NOTE))["state"] == value
        await asyncio.sleep(0.1)
    return True


@pytest.mark.asyncio(loop_scope="module")
async def test_a_webhook_automation_fires_when_on_and_meets_the_gate_when_off(
    tmp_path: Path, ha: HomeAssistant
) -> None:
    async with start_stack(tmp_path, ha_url=ha.url) as stack, caller(stack) as service:
        url = f"{stack.tenant_origin}/api/webhook/{OPEN_HOOK}"
        await set_note(ha, "before")
        async with service.post(url, json={"note": "gated"}) as r:
            assert r.status == 401
            assert "Sign in to Homeport" in await r.text()
        assert await note_stays(ha, "before")

        await switch(stack, webhooks=True)
        async with service.post(url, json={"note": "from the internet"}) as r:
            assert r.status == 200
        assert await note_becomes(ha, "from the internet")

        # Home Assistant's own method list for the webhook still applies (PUT is not on it).
        async with service.put(url, json={"note": "put"}) as r:
            assert r.status == 405
        await switch(stack, webhooks=False)
        async with service.post(url, json={"note": "off again"}) as r:
            assert r.status == 401
        assert await note_stays(ha, "from the internet")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_local_only_webhook_sees_the_callers_real_address(
    tmp_path: Path, ha: HomeAssistant
) -> None:
    remote = non_local_source()
    if remote is None:
        pytest.skip("this machine has no address that Home Assistant counts as non-local")
    async with (
        start_stack(tmp_path, ha_url=ha.url) as stack,
        caller(stack, source_ip=remote) as outside,
        caller(stack, source_ip="127.0.0.1") as inside,
    ):
        await switch(stack, webhooks=True)
        url = f"{stack.tenant_origin}/api/webhook/{LOCAL_HOOK}"
        await set_note(ha, "untouched")
        async with outside.post(url, json={"n": 1}) as r:
            assert r.status == 200  # Home Assistant answers 200 and ignores the call
        assert await note_stays(ha, "untouched")
        # The control: the same call from a loopback address fires the automation.
        async with inside.post(url, json={"n": 2}) as r:
            assert r.status == 200
        assert await note_becomes(ha, "local 2")
    assert f"Received remote request for local webhook {LOCAL_HOOK}" in ha.log_tail(400)


@pytest.mark.asyncio(loop_scope="module")
async def test_voice_assistant_endpoints_answer_with_home_assistant_tokens_only(
    tmp_path: Path, ha: HomeAssistant
) -> None:
    async with start_stack(tmp_path, ha_url=ha.url) as stack, caller(stack) as service:
        origin = stack.tenant_origin
        sync = {"requestId": "homeport-1", "inputs": [{"intent": "action.devices.SYNC"}]}
        async with service.post(origin + "/api/google_assistant", json=sync) as r:
            assert r.status == 401
            assert "Sign in to Homeport" in await r.text()  # voice off: the relay's gate

        await switch(stack, voice=True)
        async with service.post(origin + "/api/google_assistant", json=sync) as r:
            assert r.status == 401  # Home Assistant's own answer now
            assert "Sign in to Homeport" not in await r.text()
        async with service.post(
            origin + "/api/google_assistant",
            json=sync,
            headers={"Authorization": "Bearer not-a-token"},
        ) as r:
            assert r.status == 401
        async with service.post(
            origin + "/api/google_assistant", json=sync, headers=ha.headers
        ) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()
        assert answer["requestId"] == "homeport-1"
        assert "devices" in answer["payload"]

        discovery = {
            "directive": {
                "header": {
                    "namespace": "Alexa.Discovery",
                    "name": "Discover",
                    "payloadVersion": "3",
                    "messageId": "homeport-2",
                },
                "payload": {"scope": {"type": "BearerToken", "token": "x"}},
            }
        }
        async with service.post(origin + "/api/alexa/smart_home", json=discovery) as r:
            assert r.status == 401
        async with service.post(
            origin + "/api/alexa/smart_home", json=discovery, headers=ha.headers
        ) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["event"]["header"]["name"] == "Discover.Response"

        # Account linking: the token endpoint refreshes through the relay ...
        async with service.post(
            origin + "/auth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": ha.refresh_token,
                "client_id": ha.client_id,
            },
        ) as r:
            assert r.status == 200, await r.text()
            fresh = (await r.json())["access_token"]
        async with service.post(
            origin + "/api/google_assistant",
            json=sync,
            headers={"Authorization": f"Bearer {fresh}"},
        ) as r:
            assert r.status == 200
        async with service.post(
            origin + "/auth/token",
            data={"grant_type": "refresh_token", "refresh_token": "wrong", "client_id": "x"},
        ) as r:
            assert r.status == 400  # Home Assistant refuses a bad refresh token itself
        # ... while the authorize page, where a person signs in, stays behind the gate.
        async with service.get(origin + "/auth/authorize?response_type=code") as r:
            assert r.status == 401
        # And the rest of the API is closed to a valid token without a Homeport session.
        async with service.get(origin + "/api/states", headers=ha.headers) as r:
            assert r.status == 401
            assert "Sign in to Homeport" in await r.text()
