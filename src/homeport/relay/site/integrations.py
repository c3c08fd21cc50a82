"""The home page's "Integrations" card: the owner's switches and the URLs to paste.

Threats this stops: a member (or anyone but the owner) opening a home to the
internet (owner only: for anyone else the home does not exist, as on every
owner page), a cross-site form post doing it (the site's guard: origin check
and CSRF), and calls that go on after the owner said "off": turning a switch
off drops the relay's cached switches and cuts that kind's open calls at once.
Every change is an audit event (:mod:`homeport.accounts.integrations`).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web

from homeport.accounts.errors import UnknownInstance
from homeport.accounts.integrations import Switches
from homeport.accounts.sessions import SessionInfo
from homeport.relay.integration_paths import IntegrationPath, Switch
from homeport.relay.integrations import IntegrationGate
from homeport.relay.redirects import redirect
from homeport.relay.site.forms import home_id, text_fields
from homeport.relay.site.keys import ACCOUNTS, CONFIG, GATE, PAGES, current, sign_in_first

__all__ = ["INTEGRATIONS", "card", "routes"]

log = logging.getLogger(__name__)

#: The relay's cache of every home's switches and the limits of their calls.
INTEGRATIONS: Final = web.AppKey("integrations", IntegrationGate)

routes = web.RouteTableDef()

_KINDS: Final = {
    Switch.WEBHOOKS: [IntegrationPath.WEBHOOK.value],
    Switch.VOICE: [
        IntegrationPath.ALEXA.value,
        IntegrationPath.GOOGLE_ASSISTANT.value,
        IntegrationPath.TOKEN.value,
    ],
}


async def card(request: web.Request, instance_id: str) -> dict[str, Any]:
    """What the card shows: the switches and the home's URLs for each service."""
    switches = await request.app[ACCOUNTS].integrations.get(instance_id)
    origin = request.app[CONFIG].tenant_origin(instance_id)
    return {
        "webhooks": switches.webhooks,
        "voice": switches.voice,
        "webhook_url": f"{origin}/api/webhook/",
        "alexa_url": f"{origin}/api/alexa/smart_home",
        "google_url": f"{origin}/api/google_assistant",
        "authorize_url": f"{origin}/auth/authorize",
        "token_url": f"{origin}/auth/token",
        "base_url": origin,
    }


@routes.post("/instances/{id}/integrations")
async def save(request: web.Request) -> web.StreamResponse:
    session: SessionInfo | None = current(request)
    if session is None:
        return sign_in_first("/")
    instance_id = home_id(request)
    form = await text_fields(request)
    wanted = Switches(webhooks=form.get("webhooks") == "yes", voice=form.get("voice") == "yes")
    try:
        await request.app[ACCOUNTS].integrations.set(
            session.user_id,
            instance_id,
            wanted,
            ip=request.remote or "",
            user_agent=request.headers.get("User-Agent", ""),
            session_id=session.session_id,
        )
    except UnknownInstance:
        return request.app[PAGES].message(
            "No access",
            "This home does not exist, or your account has no access to it.",
            status=404,
            user_email=session.email,
        )
    # Then at once: no await between forgetting the switches and cutting the calls.
    request.app[INTEGRATIONS].forget(instance_id)
    off = [kind for switch, kinds in _KINDS.items() for kind in kinds if not _on(wanted, switch)]
    if off:
        request.app[GATE].live.end_integrations(instance_id, off)
    log.info(
        "account.integrations",
        extra={"user": session.user_id, "webhooks": wanted.webhooks, "voice": wanted.voice},
    )
    return redirect(f"/instances/{instance_id}?done=policy#integrations")


def _on(switches: Switches, switch: Switch) -> bool:
    return switches.webhooks if switch is Switch.WEBHOOKS else switches.voice
