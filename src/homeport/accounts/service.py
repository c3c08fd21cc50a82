"""The accounts service: one facade over the stores that each do one job.

:class:`Accounts` is what the relay's web handlers, tunnel hub and admin CLI
hold; each store owns every rule about its part, tested there once rather
than re-implemented per handler:

* :attr:`Accounts.users` (:mod:`.users`): accounts, passwords, disabling;
* :attr:`Accounts.sessions` (:mod:`.sessions`): account and tenant sessions,
  hand-off codes, session lifetimes;
* :attr:`Accounts.instances` (:mod:`.instances`): homes, link codes, members;
* :attr:`~Accounts.totp`, :attr:`~Accounts.passkeys`, :attr:`~Accounts.sharing`,
  :attr:`~Accounts.oidc`, :attr:`~Accounts.email_signins`,
  :attr:`~Accounts.password_resets`, :attr:`~Accounts.signups`,
  :attr:`~Accounts.email_changes`, :attr:`~Accounts.exports`, :attr:`~Accounts.deletion`,
  :attr:`~Accounts.throttle`, :attr:`~Accounts.audit`, :attr:`~Accounts.integrations`.

Design rules, for every store:

* **Deny by default.** Every check returns "no" unless each condition is
  positively met; tenant access is re-checked on every session lookup, so
  removing a member or disabling an account takes effect on the next
  request, not when a session expires.
* **Secrets only as hashes.** Tokens and codes are returned to the caller
  once and stored as SHA-256 digests; none is ever logged.
* **Single use is atomic.** Every code is used up by one conditional
  statement in a write transaction (:func:`~.single_use.consume_once`), so
  two concurrent requests cannot both redeem one code.
* **Injectable clock** (``now``) so expiry is tested exactly; every store
  shares the facade's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Delete, delete, or_

from homeport.accounts.alerts import OfflineAlerts
from homeport.accounts.audit import Audit
from homeport.accounts.breached import BreachedPasswords
from homeport.accounts.db import Database
from homeport.accounts.deletion import AccountDeletion
from homeport.accounts.email_change import EmailChanges
from homeport.accounts.email_signin import EmailSignins
from homeport.accounts.export import AccountExport
from homeport.accounts.instances import InstanceRow, Instances
from homeport.accounts.integrations import IntegrationSettings
from homeport.accounts.models import (
    HandoffCode,
    Instance,
    LinkCode,
    PasskeyChallenge,
    PendingLogin,
    ThrottleEntry,
    User,
    WebSession,
)
from homeport.accounts.oidc import OidcStore
from homeport.accounts.passkeys import Passkeys
from homeport.accounts.password_reset import PasswordResets
from homeport.accounts.secretbox import SecretBox
from homeport.accounts.sessions import (
    ACCOUNT_ABSOLUTE,
    ACCOUNT_IDLE,
    TENANT_ABSOLUTE,
    TENANT_IDLE,
    SessionInfo,
    SessionKind,
    Sessions,
)
from homeport.accounts.sharing import Sharing
from homeport.accounts.signup import Signups
from homeport.accounts.single_use import rowcount
from homeport.accounts.throttle import PRUNE_AFTER, Throttle
from homeport.accounts.totp import Totp
from homeport.accounts.users import Users

__all__ = ["Accounts", "InstanceRow", "SessionInfo", "SessionKind"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Accounts:
    """Every accounts store over one :class:`Database` and one clock."""

    def __init__(
        self,
        db: Database,
        *,
        now: Callable[[], datetime] = _utcnow,
        account_idle: timedelta = ACCOUNT_IDLE,
        account_absolute: timedelta = ACCOUNT_ABSOLUTE,
        tenant_idle: timedelta = TENANT_IDLE,
        tenant_absolute: timedelta = TENANT_ABSOLUTE,
        touch_interval: timedelta = timedelta(minutes=1),
        handoff_lifetime: timedelta = timedelta(seconds=60),
        link_code_lifetime: timedelta = timedelta(minutes=10),
        secret_box: SecretBox | None = None,
        breached_passwords: BreachedPasswords | None = None,
    ) -> None:
        self._db = db
        self._clock = now
        #: Audit log (metadata only, 180 days); other stores record through it too.
        self.audit = Audit(db, now=self._now)
        #: ``breached_passwords``: the range check for new passwords (off when ``None``).
        self.users = Users(db, self.audit, now=self._now, breached=breached_passwords)
        self.sessions = Sessions(
            db,
            now=self._now,
            account_idle=account_idle,
            account_absolute=account_absolute,
            tenant_idle=tenant_idle,
            tenant_absolute=tenant_absolute,
            touch_interval=touch_interval,
            handoff_lifetime=handoff_lifetime,
        )
        self.instances = Instances(
            db, self.audit, now=self._now, link_code_lifetime=link_code_lifetime
        )
        #: Abuse-control counters (R-RATE) in the same database, on the same clock.
        self.throttle = Throttle(db, now=self._now)
        #: TOTP second factor and pending sign-ins; seeds sealed by ``secret_box``.
        self.totp = Totp(db, secret_box, self.throttle, now=self._now)
        #: Passkeys (WebAuthn): second factor and passwordless sign-in.
        self.passkeys = Passkeys(db, self.throttle, now=self._now)
        #: Owner actions: invitations, app links, the second-factor policy.
        self.sharing = Sharing(db, self.instances, now=self._now, audit=self.audit)
        #: OpenID sign-in flows and linked (issuer, subject) identities.
        self.oidc = OidcStore(db, secret_box, now=self._now)
        #: Emailed codes for sign-ins from new networks, and password reset links.
        self.email_signins = EmailSignins(db, self.throttle, now=self._now)
        self.password_resets = PasswordResets(db, self.throttle, now=self._now)
        self.signups = Signups(db, self.throttle, now=self._now, breached=breached_passwords)
        #: Changing the account's address: a code to the new one, an undo link to the old.
        self.email_changes = EmailChanges(db, self.throttle, now=self._now)
        #: What a person may ask for under the GDPR: their data, and their account gone.
        self.exports = AccountExport(db, self.audit, now=self._now)
        self.deletion = AccountDeletion(db, self.instances, self.audit, now=self._now)
        #: Per home: may webhooks and voice assistants pass the gate (owner switches).
        self.integrations = IntegrationSettings(db, self.audit, now=self._now)
        self.offline_alerts = OfflineAlerts(db, now=self._now)

    def _now(self) -> datetime:
        value = self._clock()
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("the clock must return timezone-aware datetimes")
        return value.astimezone(UTC)

    # ---------------------------------------------------- the stores' old names
    # What callers knew before the stores (the tunnel hub, the tenant hosts, the admin
    # commands, the tests): each passes straight to its store. New code calls the store.

    # -- users (Users)

    async def create_user(self, email: str, password: str) -> User:
        """:meth:`Users.create`."""
        return await self.users.create(email, password)

    async def list_users(self) -> list[User]:
        """:meth:`Users.all`."""
        return await self.users.all()

    async def get_user(self, user_id: int) -> User | None:
        """:meth:`Users.get`."""
        return await self.users.get(user_id)

    async def get_user_by_email(self, email: str) -> User | None:
        """:meth:`Users.by_email`."""
        return await self.users.by_email(email)

    async def set_user_disabled(self, user_id: int, disabled: bool) -> None:
        """:meth:`Users.set_disabled`."""
        return await self.users.set_disabled(user_id, disabled)

    async def set_password(
        self, user_id: int, new_password: str, *, keep_session_id: int | None = None
    ) -> None:
        """:meth:`Users.set_password`."""
        return await self.users.set_password(user_id, new_password, keep_session_id=keep_session_id)

    async def authenticate(self, email: str, password: str) -> User | None:
        """:meth:`Users.authenticate`."""
        return await self.users.authenticate(email, password)

    # -- sessions (Sessions)

    async def create_session(
        self,
        user: User | int,
        kind: SessionKind,
        *,
        instance_id: str | None = None,
        user_agent: str,
        ip: str,
        handoff_code: str | None = None,
        second_factor: bool = False,
    ) -> tuple[str, WebSession]:
        """:meth:`Sessions.create`."""
        return await self.sessions.create(
            user,
            kind,
            instance_id=instance_id,
            user_agent=user_agent,
            ip=ip,
            handoff_code=handoff_code,
            second_factor=second_factor,
        )

    async def resolve_session(
        self, token: str, *, kind: SessionKind, instance_id: str | None = None
    ) -> SessionInfo | None:
        """:meth:`Sessions.resolve`."""
        return await self.sessions.resolve(token, kind=kind, instance_id=instance_id)

    async def revoke_session(self, session_id: int, *, user_id: int | None = None) -> bool:
        """:meth:`Sessions.revoke`."""
        return await self.sessions.revoke(session_id, user_id=user_id)

    async def sign_out(self, session_id: int) -> list[int]:
        """:meth:`Sessions.sign_out`."""
        return await self.sessions.sign_out(session_id)

    async def revoke_user_sessions(
        self, user_id: int, *, except_session_id: int | None = None
    ) -> int:
        """:meth:`Sessions.revoke_user`."""
        return await self.sessions.revoke_user(user_id, except_session_id=except_session_id)

    async def revoke_other_sessions(self, user_id: int, keep_session_id: int) -> list[int]:
        """:meth:`Sessions.revoke_others`."""
        return await self.sessions.revoke_others(user_id, keep_session_id)

    async def live_session_ids(self, session_ids: Iterable[int]) -> set[int]:
        """:meth:`Sessions.live_ids`."""
        return await self.sessions.live_ids(session_ids)

    async def list_sessions(self, user_id: int) -> list[WebSession]:
        """:meth:`Sessions.of_user`."""
        return await self.sessions.of_user(user_id)

    async def create_handoff(
        self, user_id: int, instance_id: str, binding: str, *, session_id: int | None = None
    ) -> str:
        """:meth:`Sessions.create_handoff`."""
        return await self.sessions.create_handoff(
            user_id, instance_id, binding, session_id=session_id
        )

    async def consume_handoff(self, code: str, instance_id: str, binding: str | None) -> int | None:
        """:meth:`Sessions.consume_handoff`."""
        return await self.sessions.consume_handoff(code, instance_id, binding)

    # -- instances (Instances)

    async def can_access(self, user_id: int, instance_id: str) -> bool:
        """:meth:`Instances.can_access`."""
        return await self.instances.can_access(user_id, instance_id)

    async def add_member(self, instance_id: str, user_id: int) -> None:
        """:meth:`Instances.add_member`."""
        return await self.instances.add_member(instance_id, user_id)

    async def remove_member(self, instance_id: str, user_id: int) -> bool:
        """:meth:`Instances.remove_member`."""
        return await self.instances.remove_member(instance_id, user_id)

    async def create_link_code(self, addon_public_key: str) -> tuple[str, datetime]:
        """:meth:`Instances.create_link_code`."""
        return await self.instances.create_link_code(addon_public_key)

    def on_linked(self, listener: Callable[[str], None]) -> None:
        """:meth:`Instances.on_linked`."""
        self.instances.on_linked(listener)

    async def link_instance(self, code: str, owner_email: str, name: str = "Home") -> Instance:
        """:meth:`Instances.link`."""
        return await self.instances.link(code, owner_email, name)

    async def instance_for_key(self, public_key_text: str) -> Instance | None:
        """:meth:`Instances.for_key`."""
        return await self.instances.for_key(public_key_text)

    async def get_instance(self, instance_id: str) -> Instance | None:
        """:meth:`Instances.get`."""
        return await self.instances.get(instance_id)

    async def list_instances(self, *, user_id: int | None = None) -> list[InstanceRow]:
        """:meth:`Instances.find`."""
        return await self.instances.find(user_id=user_id)

    async def mark_connected(self, instance_id: str) -> None:
        """:meth:`Instances.mark_connected`."""
        return await self.instances.mark_connected(instance_id)

    async def record_presence(
        self, connected: Mapping[str, datetime], disconnected: Mapping[str, datetime]
    ) -> None:
        """:meth:`Instances.record_presence`."""
        return await self.instances.record_presence(connected, disconnected)

    async def mark_disconnected(self, instance_id: str | None = None) -> None:
        """:meth:`Instances.mark_disconnected`."""
        return await self.instances.mark_disconnected(instance_id)

    async def unlink_instance(self, instance_id: str) -> bool:
        """:meth:`Instances.unlink`."""
        return await self.instances.unlink(instance_id)

    # ------------------------------------------------------------ housekeeping

    async def purge_expired(self, *, keep: timedelta = timedelta(days=30)) -> int:
        """Delete dead codes now and dead sessions after ``keep``; rows deleted.

        Run periodically (e.g. hourly) by the relay.
        """
        now = self._now()
        horizon = now - keep
        total = 0
        statements: Sequence[Delete] = (
            delete(LinkCode).where(or_(LinkCode.expires_at <= now, LinkCode.used_at.is_not(None))),
            delete(ThrottleEntry).where(
                ThrottleEntry.updated_at <= now - PRUNE_AFTER,
                or_(ThrottleEntry.next_allowed_at.is_(None), ThrottleEntry.next_allowed_at <= now),
            ),
            delete(HandoffCode).where(
                or_(HandoffCode.expires_at <= now, HandoffCode.used_at.is_not(None))
            ),
            delete(PendingLogin).where(
                or_(PendingLogin.expires_at <= now, PendingLogin.used_at.is_not(None))
            ),
            delete(PasskeyChallenge).where(PasskeyChallenge.expires_at <= now),
            delete(WebSession).where(
                or_(
                    WebSession.absolute_expires_at <= horizon,
                    WebSession.idle_expires_at <= horizon,
                    WebSession.revoked_at <= horizon,
                )
            ),
        )
        async with self._db.session(write=True) as s, s.begin():
            for stmt in statements:
                total += rowcount(await s.execute(stmt))
        total += await self.email_signins.purge() + await self.password_resets.purge()
        total += await self.signups.purge() + await self.email_changes.purge()
        return total + await self.oidc.purge()
