"""Passkeys (WebAuthn): a phishing-resistant second factor and passwordless sign-in.

Built on the ``webauthn`` library (py_webauthn), which checks the ceremonies;
this module keeps the state around them. Threats and rules (R-MFA-01):

* **Phishing and relayed sign-ins.** The browser binds every response to the
  origin it talks to and the authenticator to the relying-party id (the account
  host); both are checked (``expected_origin``, ``expected_rp_id``), so a
  look-alike site cannot collect a response that works here.
* **Replay.** Each ceremony has a fresh 256-bit challenge, stored server-side
  bound to a random cookie token (only its SHA-256 is kept), used once — it is
  deleted when a response is checked, right or wrong — and valid 5 minutes.
  ``purpose`` keeps a registration challenge from finishing a sign-in, and a
  second-factor challenge names the account whose password was just proven.
* **Cloned authenticators.** The signature counter must move forward whenever
  either side reports one (py_webauthn refuses otherwise).
* **A passkey alone must be two factors.** User verification (PIN or
  biometric on the device) is *required* at registration and at every use, so
  a passwordless sign-in is possession plus a local secret, as NIST SP 800-63B
  counts a multi-factor cryptographic authenticator. Without the UV flag the
  response is refused.
* **Account persistence by a stolen session.** Adding a passkey needs the
  account password again (the caller checks it; see ``relay/site_passkeys.py``).
* **Enumeration.** Discoverable sign-in sends no credential list and takes no
  email, so nothing tells which accounts exist. The user handle handed to
  authenticators is 32 random bytes, not the email or account id.
* **Floods.** Failed checks are throttled per client network (IPv6 per /64)
  like other credential checks, answered with a wait. Starting a sign-in
  needs no account and stores a challenge row for 5 minutes, so it is limited
  per client network too (:data:`OPTIONS_NETWORK`; see
  :meth:`Passkeys.authentication_options` for why not a stateless challenge).
* **Disabled accounts.** A passkey of a disabled account is refused inside
  the check, before its signature counter moves or the network's failure
  count is given back: the same refusal as any other failure.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import delete, func, select, update
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import parse_authentication_credential_json
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import (
    InvalidAuthenticationResponse,
    InvalidJSONStructure,
    InvalidRegistrationResponse,
)
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    CredentialDeviceType,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from homeport.accounts.db import Database
from homeport.accounts.identifiers import new_token, sha256_hex
from homeport.accounts.models import (
    CREDENTIAL_ID_MAX,
    PASSKEY_NAME_MAX,
    PasskeyChallenge,
    PasskeyCredential,
    PasskeyUser,
    User,
)
from homeport.accounts.single_use import consume_once, rowcount
from homeport.accounts.throttle import Throttle, Window, network_key

__all__ = [
    "CEREMONY_LIFETIME",
    "MAX_PASSKEYS",
    "OPTIONS_NETWORK",
    "PASSKEY_NETWORK",
    "PasskeyError",
    "PasskeyThrottled",
    "Passkeys",
    "RelyingParty",
    "SignIn",
]

_log = logging.getLogger(__name__)

CEREMONY_LIFETIME: Final = timedelta(minutes=5)
#: How many passkeys one account may register (each is a row and a list entry).
MAX_PASSKEYS: Final = 20
#: Failed passkey checks per client network.
PASSKEY_NETWORK: Final = Window(limit=20, window=timedelta(minutes=10))
#: Sign-in ceremonies started per client network (each stores a challenge for
#: :data:`CEREMONY_LIFETIME`); a successful sign-in gives one back.
OPTIONS_NETWORK: Final = Window(limit=30, window=timedelta(minutes=10))
#: ES256 first (every platform authenticator), EdDSA, RS256 (Windows Hello).
ALGORITHMS: Final = [
    COSEAlgorithmIdentifier.ECDSA_SHA_256,
    COSEAlgorithmIdentifier.EDDSA,
    COSEAlgorithmIdentifier.RSASSA_PKCS1_v1_5_SHA_256,
]
#: The largest credential response we read (attestation objects with certificates).
MAX_RESPONSE = 64 * 1024


class PasskeyError(Exception):
    """A passkey ceremony failed; the message is safe to show to the person."""


class PasskeyThrottled(PasskeyError):
    """Too many ceremonies started from this network; retry after ``wait`` seconds."""

    def __init__(self, wait: float) -> None:
        super().__init__("Too many attempts. Wait a moment.")
        self.wait = wait


@dataclass(frozen=True, slots=True)
class RelyingParty:
    """Who we are to authenticators: the account host (rp id) and its origin."""

    id: str
    name: str
    origin: str


@dataclass(frozen=True, slots=True)
class SignIn:
    """``user_id`` on success; ``wait`` > 0: refused unchecked, retry after this."""

    user_id: int | None
    wait: float = 0.0


def _clean_name(name: str) -> str:
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in name).split())
    return cleaned[:PASSKEY_NAME_MAX] or "Passkey"


class Passkeys:
    """Registration and sign-in ceremonies over one :class:`Database`."""

    def __init__(self, db: Database, throttle: Throttle, *, now: Callable[[], datetime]) -> None:
        self._db = db
        self._throttle = throttle
        self._now = now

    # ---------------------------------------------------------------- queries

    async def list(self, user_id: int) -> list[PasskeyCredential]:
        async with self._db.session() as s:
            rows = await s.scalars(
                select(PasskeyCredential)
                .where(PasskeyCredential.user_id == user_id)
                .order_by(PasskeyCredential.created_at)
            )
            return list(rows)

    async def count(self, user_id: int) -> int:
        async with self._db.session() as s:
            found = await s.scalar(
                select(func.count())
                .select_from(PasskeyCredential)
                .where(PasskeyCredential.user_id == user_id)
            )
        return int(found or 0)

    async def delete(self, user_id: int, passkey_id: int) -> bool:
        """Remove one of the account's passkeys (never another account's)."""
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(
                delete(PasskeyCredential).where(
                    PasskeyCredential.id == passkey_id, PasskeyCredential.user_id == user_id
                )
            )
        return rowcount(result) == 1

    # ---------------------------------------------------------- registration

    async def _handle(self, user_id: int) -> bytes:
        async with self._db.session(write=True) as s, s.begin():
            handle = await s.scalar(
                select(PasskeyUser.handle).where(PasskeyUser.user_id == user_id)
            )
            if handle is None:
                handle = secrets.token_bytes(32)
                s.add(PasskeyUser(user_id=user_id, handle=handle))
            return handle

    async def registration_options(
        self, rp: RelyingParty, user_id: int, email: str, name: str
    ) -> tuple[str, str]:
        """Start adding a passkey: (cookie token, options JSON for the browser)."""
        existing = await self.list(user_id)
        if len(existing) >= MAX_PASSKEYS:
            raise PasskeyError(f"An account can have at most {MAX_PASSKEYS} passkeys.")
        options = generate_registration_options(
            rp_id=rp.id,
            rp_name=rp.name,
            user_name=email,
            user_id=await self._handle(user_id),
            user_display_name=email,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.REQUIRED,
                user_verification=UserVerificationRequirement.REQUIRED,
            ),
            exclude_credentials=[
                PublicKeyCredentialDescriptor(id=row.credential_id) for row in existing
            ],
            supported_pub_key_algs=ALGORITHMS,
        )
        token = await self._store(options.challenge, "register", user_id, _clean_name(name))
        return token, options_to_json(options)

    async def register(
        self, rp: RelyingParty, user_id: int, token: str, credential: str
    ) -> PasskeyCredential:
        """Check the browser's registration response and store the new passkey."""
        ceremony = await self._take(token, "register")
        if ceremony is None or ceremony.user_id != user_id:
            raise PasskeyError("This request has expired. Start again.")
        if len(credential) > MAX_RESPONSE:
            raise PasskeyError("The passkey response is too large.")
        try:
            verified = verify_registration_response(
                credential=credential,
                expected_challenge=ceremony.challenge,
                expected_rp_id=rp.id,
                expected_origin=rp.origin,
                require_user_verification=True,
                supported_pub_key_algs=ALGORITHMS,
            )
        except (InvalidRegistrationResponse, InvalidJSONStructure, ValueError, KeyError) as exc:
            _log.warning(
                "passkey.register_refused", extra={"user": user_id, "reason": type(exc).__name__}
            )
            raise PasskeyError("The passkey could not be verified. Try again.") from None
        if len(verified.credential_id) > CREDENTIAL_ID_MAX:
            raise PasskeyError("The passkey could not be verified. Try again.")
        now = self._now()
        row = PasskeyCredential(
            user_id=user_id,
            credential_id=verified.credential_id,
            public_key=verified.credential_public_key,
            sign_count=verified.sign_count,
            name=ceremony.name or "Passkey",
            backed_up=verified.credential_backed_up
            and verified.credential_device_type == CredentialDeviceType.MULTI_DEVICE,
            created_at=now,
            last_used_at=None,
        )
        async with self._db.session(write=True) as s, s.begin():
            taken = await s.scalar(
                select(PasskeyCredential.id).where(
                    PasskeyCredential.credential_id == verified.credential_id
                )
            )
            if taken is not None:
                raise PasskeyError("This passkey is already registered.")
            s.add(row)
        _log.info("passkey.registered", extra={"user": user_id})
        return row

    # ----------------------------------------------------------------- sign-in

    async def authentication_options(
        self, rp: RelyingParty, *, user_id: int | None = None, ip: str | None = None
    ) -> tuple[str, str]:
        """Start a sign-in: passwordless (``user_id`` None) or as the second factor.

        Anyone may call this, signed in or not, and each call stores a challenge
        for 5 minutes, so calls are limited per client network (IPv6 per /64):
        :data:`OPTIONS_NETWORK`, then :class:`PasskeyThrottled`. One network
        can thus hold at most 30 live challenges. Decision: a per-network
        limit rather than a stateless, signed challenge in the cookie. A signed
        challenge would store nothing here, but "each challenge works once"
        would then need a record of used challenges when responses are checked,
        because synced passkeys (iCloud Keychain, Google Password Manager)
        report a signature counter of 0 and the counter cannot stop a replayed
        response; the state would only move, and a new table and key would come
        with it. The limit keeps the single use server-side, with the same
        throttle every other unauthenticated endpoint uses.
        """
        wait = await self._throttle.attempt([(_options_key(ip), OPTIONS_NETWORK)])
        if wait > 0:
            _log.warning("passkey.options_throttled", extra={"ip": ip})
            raise PasskeyThrottled(wait)
        allow: list[PublicKeyCredentialDescriptor] = []
        if user_id is not None:
            allow = [
                PublicKeyCredentialDescriptor(id=r.credential_id) for r in await self.list(user_id)
            ]
            if not allow:
                raise PasskeyError("This account has no passkey.")
        options = generate_authentication_options(
            rp_id=rp.id,
            allow_credentials=allow,
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        purpose = "signin" if user_id is None else "second"
        token = await self._store(options.challenge, purpose, user_id, "")
        return token, options_to_json(options)

    async def authenticate(
        self,
        rp: RelyingParty,
        token: str,
        credential: str,
        *,
        user_id: int | None = None,
        ip: str | None,
    ) -> SignIn:
        """Check a sign-in response; the account it proves, or a refusal.

        With ``user_id`` (second factor) the passkey must belong to that account
        and the ceremony must have been started for it.
        """
        keys = [(f"passkey:net:{network_key(ip)}", PASSKEY_NETWORK)]
        wait = await self._throttle.attempt(keys)
        if wait > 0:
            return SignIn(None, wait)
        purpose = "signin" if user_id is None else "second"
        ceremony = await self._take(token, purpose)
        found = None
        if ceremony is not None and ceremony.user_id == user_id and len(credential) <= MAX_RESPONSE:
            found = await self._check(rp, ceremony, credential)
        if found is None or (user_id is not None and found != user_id):
            _log.warning("passkey.signin_failed", extra={"ip": ip})
            return SignIn(None)
        await self._throttle.succeeded(clear=[], refund=[keys[0][0], _options_key(ip)])
        _log.info("passkey.signin", extra={"user": found})
        return SignIn(found)

    async def _check(
        self, rp: RelyingParty, ceremony: PasskeyChallenge, credential: str
    ) -> int | None:
        try:
            parsed = parse_authentication_credential_json(credential)
        except (InvalidJSONStructure, InvalidAuthenticationResponse, ValueError, KeyError):
            return None
        async with self._db.session() as s:
            row = await s.scalar(
                select(PasskeyCredential).where(PasskeyCredential.credential_id == parsed.raw_id)
            )
            handle = None
            disabled: bool | None = None
            if row is not None:
                handle = await s.scalar(
                    select(PasskeyUser.handle).where(PasskeyUser.user_id == row.user_id)
                )
                disabled = await s.scalar(select(User.disabled).where(User.id == row.user_id))
        if row is None:
            return None
        if disabled is None or disabled:
            # Refused before the counter moves or the failure is refunded: a disabled
            # account's passkey is just another passkey that does not work here.
            _log.warning("passkey.account_disabled", extra={"user": row.user_id})
            return None
        # A discoverable credential names its account; it must be the passkey's own.
        user_handle = parsed.response.user_handle
        if user_handle is not None and (handle is None or user_handle != handle):
            return None
        try:
            verified = verify_authentication_response(
                credential=parsed,
                expected_challenge=ceremony.challenge,
                expected_rp_id=rp.id,
                expected_origin=rp.origin,
                credential_public_key=row.public_key,
                credential_current_sign_count=row.sign_count,
                require_user_verification=True,
            )
        except (InvalidAuthenticationResponse, InvalidJSONStructure, ValueError, KeyError) as exc:
            _log.warning(
                "passkey.response_refused",
                extra={"user": row.user_id, "reason": type(exc).__name__},
            )
            return None
        async with self._db.session(write=True) as s, s.begin():
            # Two responses racing with one counter value: only one may win.
            counted = await consume_once(
                s,
                update(PasskeyCredential)
                .where(
                    PasskeyCredential.id == row.id,
                    PasskeyCredential.sign_count == row.sign_count,
                )
                .values(sign_count=verified.new_sign_count, last_used_at=self._now()),
            )
        return row.user_id if counted else None

    # ------------------------------------------------------------- ceremonies

    async def _store(self, challenge: bytes, purpose: str, user_id: int | None, name: str) -> str:
        token = new_token()
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            await s.execute(delete(PasskeyChallenge).where(PasskeyChallenge.expires_at <= now))
            s.add(
                PasskeyChallenge(
                    token_hash=sha256_hex(token),
                    purpose=purpose,
                    user_id=user_id,
                    challenge=challenge,
                    name=name,
                    expires_at=now + CEREMONY_LIFETIME,
                )
            )
        return token

    async def _take(self, token: str, purpose: str) -> PasskeyChallenge | None:
        """The live ceremony for this cookie token, used up (deleted) in the same step."""
        if not token or len(token) > 64:
            return None
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            row = await s.get(PasskeyChallenge, sha256_hex(token))
            if row is None:
                return None
            taken = delete(PasskeyChallenge).where(PasskeyChallenge.token_hash == row.token_hash)
            if not await consume_once(s, taken):  # a concurrent response took it first
                return None
        if row.purpose != purpose or now >= row.expires_at:
            return None
        return row

    async def purge(self) -> int:
        now = self._now()
        async with self._db.session(write=True) as s, s.begin():
            result = await s.execute(
                delete(PasskeyChallenge).where(PasskeyChallenge.expires_at <= now)
            )
        return rowcount(result)


def _options_key(ip: str | None) -> str:
    return f"passkey:options:{network_key(ip)}"


def credential_json(body: object) -> str:
    """The ``credential`` member of a JSON request body, as JSON text for py_webauthn."""
    if not isinstance(body, dict) or not isinstance(body.get("credential"), dict):
        raise PasskeyError("The request is not a passkey response.")
    return json.dumps(body["credential"])
