"""Owner actions an add-on asks for over its tunnel: creating an app link from the panel.

Who may ask: whoever drives the add-on; in Home Assistant that is any
administrator who can open its ingress panel (the Supervisor's ingress is
admin-only).  No signature scheme is layered on top: the tunnel itself is
mutually authenticated by the handshake (the add-on proved the key linked to
its home), so the relay knows which home a request comes from and acts for
that home only, on behalf of its owner.

Threats this stops, beyond that:

* **A compromised or buggy add-on minting app links in bulk**: at most
  :data:`ADDON_APP_LINKS` (10) creations per home per hour, counted in the
  accounts database (so a restart does not reset it) before anything is
  created; the per-home cap :data:`~homeport.accounts.sharing.MAX_APP_LINKS`;
  every creation is in the audit log and mailed to the owner (when mail is
  on), so one made behind the owner's back is seen and revoked.
* **Acting for an owner who lost the home or the account**: an unlinked
  home or a disabled owner gets an error and nothing is created.
* **Secrets in logs**: the link's label and URL go only into the reply;
  logs, audit and mail carry the link's id and name.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from homeport.accounts.audit import EventType
from homeport.accounts.errors import NotOwner, UnknownInstance
from homeport.accounts.models import APP_LINK_NAME_MAX
from homeport.accounts.service import Accounts
from homeport.accounts.sharing import display_name
from homeport.accounts.throttle import Window
from homeport.mail.mailer import Outbox
from homeport.mail.messages import MailWriter
from homeport.relay.app_links import app_link_url
from homeport.relay.config import RelayConfig

__all__ = ["ADDON_APP_LINKS", "OP_CREATE_APP_LINK", "AddonControl"]

log = logging.getLogger(__name__)

OP_CREATE_APP_LINK: Final = "create_app_link"
#: App links one home's add-on may create: 10 an hour.
ADDON_APP_LINKS: Final = Window(limit=10, window=timedelta(hours=1))
#: The audit event's detail names where the link came from.
FROM_PANEL: Final = "from the add-on panel"
#: The audit log's "device" for requests over a tunnel (there is no User-Agent).
ADDON_DEVICE: Final = "Homeport add-on panel"

Reply = dict[str, Any]


def error(code: str, message: str) -> Reply:
    return {"error": code, "message": message}


class AddonControl:
    """Answers the CONTROL requests of every tunnel, each for its own home."""

    def __init__(
        self,
        config: RelayConfig,
        accounts: Accounts,
        *,
        outbox: Outbox | None = None,
        writer: MailWriter | None = None,
    ) -> None:
        self.config = config
        self.accounts = accounts
        self.outbox = outbox
        self.writer = writer

    def handler_for(
        self, instance_id: str, peer: str
    ) -> Callable[[dict[str, Any]], Awaitable[Reply]]:
        """The handler of one tunnel: ``instance_id`` is what its handshake proved."""

        async def handle(body: dict[str, Any]) -> Reply:
            return await self.handle(instance_id, peer, body)

        return handle

    async def handle(self, instance_id: str, peer: str, body: dict[str, Any]) -> Reply:
        op = body.get("op")
        if op == OP_CREATE_APP_LINK:
            return await self.create_app_link(instance_id, peer, body.get("name"))
        log.warning("addon_control.unknown_op", extra={"instance": instance_id})
        return error("unknown_op", "The relay does not know this request.")

    async def create_app_link(self, instance_id: str, peer: str, name: object) -> Reply:
        if not isinstance(name, str):
            return error("invalid", "Give the device a name.")
        try:
            # Before the rate limit: a typo is not a creation.
            clean = display_name(name[:200], APP_LINK_NAME_MAX)
        except ValueError as exc:
            return error("invalid", str(exc))
        instance = await self.accounts.get_instance(instance_id)
        if instance is None:
            return error("unlinked", "This add-on is no longer linked to a home.")
        owner = await self.accounts.get_user(instance.owner_id)
        if owner is None or owner.disabled:
            return error("owner_disabled", "The home's owner account is disabled.")
        key = f"applink:addon:{instance_id}"
        throttle = self.accounts.throttle
        wait = await throttle.attempt([(key, ADDON_APP_LINKS)])
        if wait > 0:
            log.warning("addon_control.app_links_throttled", extra={"instance": instance_id})
            minutes = max(1, round(wait / 60))
            return error(
                "too_many",
                f"Too many app links were created from the add-on. Try again in about "
                f"{minutes} minute{'s' if minutes != 1 else ''}, or use the account site.",
            )
        try:
            label, row = await self.accounts.sharing.create_app_link(owner.id, instance_id, clean)
        except UnknownInstance:
            await throttle.succeeded(clear=[], refund=[key])
            return error("unlinked", "This add-on is no longer linked to a home.")
        except NotOwner:  # handed over to a new owner between the two reads: ask again
            await throttle.succeeded(clear=[], refund=[key])
            return error("owner_changed", "The home has just changed owner. Try again.")
        except ValueError as exc:  # the per-home cap
            await throttle.succeeded(clear=[], refund=[key])
            return error("limit", str(exc))
        manage_url = f"{self.config.account_origin}/instances/{instance_id}"
        await self.accounts.audit.record(
            EventType.APP_LINK_CREATED,
            user_id=owner.id,
            instance_id=instance_id,
            ip=peer,
            detail=f"app link {row.id}, {FROM_PANEL}",
            device=ADDON_DEVICE,
        )
        log.info("addon_control.app_link_created", extra={"instance": instance_id, "link": row.id})
        if self.outbox is not None and self.writer is not None:
            self.outbox.post(
                self.writer.app_link_created(
                    owner.email,
                    home=instance.name,
                    device=row.name,
                    manage_url=manage_url,
                    moment=datetime.now(UTC),
                    ip=peer,
                )
            )
        return {
            "url": app_link_url(self.config, label),
            "name": row.name,
            "manage_url": manage_url,
        }
