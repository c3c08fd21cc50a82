"""OpenID sign-in state: flows (state, nonce, PKCE, browser binding) and linked identities.

Threats and rules (R-OIDC-01, R-OIDC-03, security checklist 6.5):

* **Forged or replayed callbacks.** ``state``, ``nonce``, the PKCE verifier and
  the browser-binding value are 256-bit values from :mod:`secrets`, fresh per
  flow. Only hashes of state, nonce and binding are stored; the verifier (it
  must be sent to the provider) is sealed with the relay's
  :class:`~homeport.accounts.secretbox.SecretBox`, bound (as associated data)
  to the flow's state *and* binding hashes, so it opens only for that flow of
  that browser. A flow lives :data:`FLOW_LIFETIME` and each step is an atomic
  ``UPDATE … WHERE status =`` the expected one, so every step works once.
* **A flow finished in another browser** (login/session swap, issue #9): an
  attacker starts a flow, has the victim complete it at the provider, and
  finishes it in his own browser as the victim, or with her identity linked to
  his account. So the identity is released only to a browser that both
  *delivered the callback* and *holds the binding cookie* of the browser that
  started the flow:

  - :meth:`OidcStore.claim` checks the binding cookie at the callback itself
    whenever the browser can send it (a top-level GET: Google). A missing or
    wrong cookie uses the flow up (:class:`WrongBrowser`); no code is redeemed.
  - Apple's ``form_post`` callback is a cross-site POST that carries no Lax
    cookie. :meth:`OidcStore.verified` then hands the delivering browser a fresh
    one-time *ticket* (hash stored), and only :meth:`OidcStore.finish` with that
    ticket **and** the matching binding cookie releases the identity. The
    browser that brought the ticket without the cookie (the victim's) uses the
    flow up; the browser with the cookie but no ticket (the attacker's) never
    learns it.
* **Account takeover by email.** An identity is (issuer, subject). The email
  the provider reports is never used to find an account: an unknown identity
  whose verified email belongs to an existing account is *held*
  (:meth:`OidcStore.hold_for_link`) until that account is signed in to with
  its own password and factors; only then is it linked. A link started from
  the settings page waits (:meth:`OidcStore.await_confirmation`) for the
  person to confirm, on a page naming the identity, with a same-origin POST.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from homeport.accounts.db import Database
from homeport.accounts.errors import AccountExists, AccountsError
from homeport.accounts.identifiers import normalise_email, sha256_hex
from homeport.accounts.models import NEXT_PATH_MAX, OidcFlow, OidcIdentity, User
from homeport.accounts.oidc_tokens import VerifiedIdentity
from homeport.accounts.passwords import hash_password_async
from homeport.accounts.secretbox import SecretBox
from homeport.accounts.single_use import consume_once, rowcount

__all__ = [
    "FLOW_LIFETIME",
    "ClaimedFlow",
    "FinishedFlow",
    "IdentityTaken",
    "LastSignInMethod",
    "OidcStore",
    "StartedFlow",
    "WrongBrowser",
]

FLOW_LIFETIME: Final = timedelta(minutes=10)
Purpose = Literal["signin", "link"]


class IdentityTaken(AccountsError):
    """This provider identity is already linked to another account."""


class LastSignInMethod(AccountsError):
    """Unlinking would leave the account with no way to sign in."""


class WrongBrowser(AccountsError):
    """The flow came back in a browser without its binding cookie; it is used up."""


@dataclass(frozen=True, slots=True)
class StartedFlow:
    """The secrets of a new flow, returned once: state/nonce/verifier go to the provider."""

    state: str
    nonce: str
    code_verifier: str
    binding: str


@dataclass(frozen=True, slots=True)
class ClaimedFlow:
    id: int
    provider: str
    nonce_hash: str
    code_verifier: str


@dataclass(frozen=True, slots=True)
class FinishedFlow:
    id: int
    provider: str
    purpose: Purpose
    user_id: int | None
    next_path: str
    created_at: datetime
    identity: VerifiedIdentity


def _finished(row: OidcFlow) -> FinishedFlow | None:
    if row.issuer is None or row.subject is None:
        return None
    purpose: Purpose = "link" if row.purpose == "link" else "signin"
    return FinishedFlow(
        id=row.id,
        provider=row.provider,
        purpose=purpose,
        user_id=row.user_id,
        next_path=row.next_path,
        created_at=row.created_at,
        identity=VerifiedIdentity(row.issuer, row.subject, row.email, bool(row.email_verified)),
    )


def _token() -> str:
    return secrets.token_urlsafe(32)


def _aad(state_hash: str, binding_hash: str) -> bytes:
    return f"homeport-oidc-verifier:{state_hash}:{binding_hash}".encode("ascii")


def _same_binding(binding: str, binding_hash: str) -> bool:
    """Does the browser's cookie value hash to the flow's binding? (constant time)"""
    if not binding or len(binding) > 128:
        return False
    return hmac.compare_digest(sha256_hex(binding), binding_hash)


class OidcStore:
    """Flows and identities in the accounts database, on the accounts clock."""

    def __init__(
        self, db: Database, secret_box: SecretBox | None, *, now: Callable[[], datetime]
    ) -> None:
        self._db = db
        self._box = secret_box
        self._now = now

    def _require_box(self) -> SecretBox:
        if self._box is None:
            raise RuntimeError("OpenID sign-in needs the relay's secret box")
        return self._box

    # ----------------------------------------------------------------- flows

    async def start(
        self, provider: str, purpose: Purpose, *, next_path: str, user_id: int | None = None
    ) -> StartedFlow:
        started = StartedFlow(
            state=_token(),
            nonce=_token(),
            code_verifier=secrets.token_urlsafe(48),
            binding=_token(),
        )
        state_hash, binding_hash = sha256_hex(started.state), sha256_hex(started.binding)
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            s.add(
                OidcFlow(
                    state_hash=state_hash,
                    binding_hash=binding_hash,
                    nonce_hash=sha256_hex(started.nonce),
                    verifier_sealed=self._require_box().seal(
                        started.code_verifier.encode("ascii"), _aad(state_hash, binding_hash)
                    ),
                    provider=provider,
                    purpose=purpose,
                    user_id=user_id,
                    next_path=next_path if len(next_path) <= NEXT_PATH_MAX else "/",
                    status="started",
                    created_at=now,
                    expires_at=now + FLOW_LIFETIME,
                )
            )
        return started

    async def claim(self, state: str, provider: str, binding: str | None) -> ClaimedFlow | None:
        """The flow this callback's ``state`` belongs to, used up at once; else ``None``.

        ``binding`` is the browser's binding cookie (``""`` if it sent none);
        ``None`` only where the browser *cannot* send it (Apple's cross-site
        ``form_post``), which leaves the check to :meth:`finish`. A cookie that
        does not match uses the flow up and raises :class:`WrongBrowser`.
        """
        if not state or len(state) > 128:
            return None
        state_hash = sha256_hex(state)
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            row = await s.scalar(select(OidcFlow).where(OidcFlow.state_hash == state_hash))
            if row is None or row.provider != provider:
                return None
            same = binding is None or _same_binding(binding, row.binding_hash)
            claimed = (
                update(OidcFlow)
                .where(
                    OidcFlow.id == row.id,
                    OidcFlow.status == "started",
                    OidcFlow.expires_at > now,
                )
                .values(status="claimed" if same else "done")
            )
            if not await consume_once(s, claimed):
                return None
        if not same:  # raised after the commit: the flow stays used up
            raise WrongBrowser("the flow came back in another browser")
        verifier = self._require_box().open(row.verifier_sealed, _aad(state_hash, row.binding_hash))
        return ClaimedFlow(row.id, row.provider, row.nonce_hash, verifier.decode("ascii"))

    async def verified(self, flow_id: int, identity: VerifiedIdentity) -> str | None:
        """Record who the ID token named; the one-time ticket for :meth:`finish`.

        The ticket goes only to the browser that delivered the callback; the
        identity is released only to it *and* the binding cookie together.
        ``None`` if the flow was no longer claimed.
        """
        ticket = _token()
        async with self._db.session(write=True) as s, s.begin():
            recorded = await consume_once(
                s,
                update(OidcFlow)
                .where(OidcFlow.id == flow_id, OidcFlow.status == "claimed")
                .values(
                    status="verified",
                    ticket_hash=sha256_hex(ticket),
                    issuer=identity.issuer,
                    subject=identity.subject,
                    email=identity.email,
                    email_verified=identity.email_verified,
                ),
            )
        return ticket if recorded else None

    async def fail(self, flow_id: int) -> None:
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(update(OidcFlow).where(OidcFlow.id == flow_id).values(status="done"))

    async def finish(self, ticket: str, binding: str) -> FinishedFlow | None:
        """The verified flow named by ``ticket``, used up; released only to its browser.

        ``None`` for an unknown, used or expired ticket. A ticket brought by a
        browser whose binding cookie is missing or wrong uses the flow up and
        raises :class:`WrongBrowser`: nothing is released, to anyone, ever.
        """
        if not ticket or len(ticket) > 128:
            return None
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            row = await s.scalar(select(OidcFlow).where(OidcFlow.ticket_hash == sha256_hex(ticket)))
            if row is None:
                return None
            finished = (
                update(OidcFlow)
                .where(
                    OidcFlow.id == row.id,
                    OidcFlow.status == "verified",
                    OidcFlow.expires_at > now,
                )
                .values(status="done")
            )
            if not await consume_once(s, finished):
                return None
        if not _same_binding(binding, row.binding_hash):
            raise WrongBrowser("the flow was finished in another browser")
        return _finished(row)

    async def _take(
        self, binding: str, status: str, user_id: int, *, use_up: bool = True
    ) -> FinishedFlow | None:
        """This browser's flow in ``status`` for ``user_id`` (used up unless ``use_up=False``)."""
        if not binding or len(binding) > 128:
            return None
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            row = await s.scalar(
                select(OidcFlow)
                .where(
                    OidcFlow.binding_hash == sha256_hex(binding),
                    OidcFlow.status == status,
                    OidcFlow.expires_at > now,
                )
                .order_by(OidcFlow.id.desc())
                .limit(1)
            )
            if row is None or row.user_id != user_id:
                return None
            if use_up:
                taken = (
                    update(OidcFlow)
                    .where(OidcFlow.id == row.id, OidcFlow.status == status)
                    .values(status="done")
                )
                if not await consume_once(s, taken):
                    return None
        return _finished(row)

    async def hold_for_link(self, flow_id: int, user_id: int) -> None:
        """Keep a finished flow until the owner of ``user_id`` signs in with its own factors."""
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(
                update(OidcFlow)
                .where(
                    OidcFlow.id == flow_id,
                    OidcFlow.status == "done",
                    OidcFlow.purpose == "signin",
                )
                .values(status="link", user_id=user_id)
            )

    async def held(self, binding: str) -> tuple[str, int] | None:
        """(provider, account id) of the identity this browser holds for linking, if any."""
        if not binding or len(binding) > 128:
            return None
        async with self._db.session() as s:
            row = await s.scalar(
                select(OidcFlow).where(
                    OidcFlow.binding_hash == sha256_hex(binding),
                    OidcFlow.status == "link",
                    OidcFlow.expires_at > self._now(),
                )
            )
        if row is None or row.user_id is None:
            return None
        return row.provider, row.user_id

    async def take_held(self, binding: str, user_id: int) -> FinishedFlow | None:
        """The held identity for ``user_id``, used up; ``None`` if gone or for another account."""
        return await self._take(binding, "link", user_id)

    async def await_confirmation(self, flow_id: int) -> None:
        """Keep a finished settings-page link until the person confirms it (a POST)."""
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(
                update(OidcFlow)
                .where(
                    OidcFlow.id == flow_id,
                    OidcFlow.status == "done",
                    OidcFlow.purpose == "link",
                )
                .values(status="confirm")
            )

    async def to_confirm(self, binding: str, user_id: int) -> FinishedFlow | None:
        """The identity this browser is asked to link to ``user_id`` (left in place)."""
        return await self._take(binding, "confirm", user_id, use_up=False)

    async def take_confirmed(self, binding: str, user_id: int) -> FinishedFlow | None:
        """The identity to link to ``user_id`` now that it is confirmed, used up."""
        return await self._take(binding, "confirm", user_id)

    async def purge(self) -> int:
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(delete(OidcFlow).where(OidcFlow.expires_at <= self._now()))
        return rowcount(result)

    # ------------------------------------------------------------ identities

    async def identity(self, issuer: str, subject: str) -> OidcIdentity | None:
        async with self._db.session() as s:
            return await s.scalar(
                select(OidcIdentity).where(
                    OidcIdentity.issuer == issuer, OidcIdentity.subject == subject
                )
            )

    async def identities(self, user_id: int) -> list[OidcIdentity]:
        async with self._db.session() as s:
            return list(
                await s.scalars(
                    select(OidcIdentity)
                    .where(OidcIdentity.user_id == user_id)
                    .order_by(OidcIdentity.id)
                )
            )

    async def link(self, user_id: int, provider: str, identity: VerifiedIdentity) -> OidcIdentity:
        """Link ``identity`` to the account; :class:`IdentityTaken` if another has it."""
        now = self._now()
        row = OidcIdentity(
            user_id=user_id,
            provider=provider,
            issuer=identity.issuer,
            subject=identity.subject,
            email=(identity.email or "")[:320],
            created_at=now,
            last_used_at=now,
        )
        existing = await self.identity(identity.issuer, identity.subject)
        if existing is not None:
            if existing.user_id == user_id:
                return existing
            raise IdentityTaken("This sign-in is already linked to another account.")
        try:
            async with self._db.session(write=True) as s, s.begin():
                s.add(row)
        except IntegrityError as exc:
            raise IdentityTaken("This sign-in is already linked to another account.") from exc
        return row

    async def touch(self, identity_id: int) -> None:
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(
                update(OidcIdentity)
                .where(OidcIdentity.id == identity_id)
                .values(last_used_at=self._now())
            )

    async def unlink(self, user_id: int, identity_id: int) -> bool:
        """Remove one of the account's identities; never its last way to sign in."""
        async with self._db.session(write=True) as s, s.begin():
            user = await s.get(User, user_id)
            if user is None:
                return False
            count = await s.scalar(
                select(func.count())
                .select_from(OidcIdentity)
                .where(OidcIdentity.user_id == user_id)
            )
            if not user.has_password and (count or 0) <= 1:
                raise LastSignInMethod(
                    "This is the only way to sign in to this account; it cannot be removed."
                )
            result = await s.execute(
                delete(OidcIdentity).where(
                    OidcIdentity.id == identity_id, OidcIdentity.user_id == user_id
                )
            )
        return rowcount(result) == 1

    async def create_account(self, email: str, provider: str, identity: VerifiedIdentity) -> User:
        """A new account for a first sign-in: no password, the identity linked.

        The password hash is of 256 random bits that are thrown away, so the
        password check costs the same for this account and can never succeed.
        """
        normal = normalise_email(email)
        now = self._now()
        user = User(
            email=normal,
            password_hash=await hash_password_async(secrets.token_urlsafe(32)),
            created_at=now,
            disabled=False,
            has_password=False,
        )
        try:
            async with self._db.session(write=True) as s, s.begin():
                await self._add_account(s, user, provider, identity, now)
        except IntegrityError as exc:
            raise AccountExists("An account with this email address already exists.") from exc
        return user

    @staticmethod
    async def _add_account(
        s: AsyncSession, user: User, provider: str, identity: VerifiedIdentity, now: datetime
    ) -> None:
        s.add(user)
        await s.flush()
        s.add(
            OidcIdentity(
                user_id=user.id,
                provider=provider,
                issuer=identity.issuer,
                subject=identity.subject,
                email=user.email,
                created_at=now,
                last_used_at=now,
            )
        )
