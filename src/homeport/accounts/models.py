"""Relational schema of the relay's accounts store.

The models are deliberately plain: no ORM relationships (lazy loading does
not mix with asyncio), only columns, keys and constraints, so every query
in :mod:`homeport.accounts.service` is explicit about what it reads.

Portability rules (SQLite today, PostgreSQL later):

* timestamps go through :class:`UTCDateTime`, which accepts only
  timezone-aware values, stores them as UTC and always hands back aware
  UTC datetimes, whatever the backend does with time zones;
* no SQLite-only types or features; enumerations are short strings guarded
  by ``CHECK`` constraints instead of native enum types;
* every constraint has a deterministic name (:data:`NAMING_CONVENTION`), so
  Alembic can alter it later on both backends (SQLite batch mode needs
  names to recreate tables).

Secrets never sit in these tables in clear: session tokens, hand-off codes
and link codes are stored as SHA-256 hex digests, passwords as Argon2id
hashes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Update,
    false,
    true,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

__all__ = [
    "NAMING_CONVENTION",
    "AcmeChallenge",
    "AppLink",
    "AuditEvent",
    "Base",
    "CertificateRow",
    "HandoffCode",
    "Instance",
    "InstanceIntegrations",
    "InstanceMember",
    "InstancePolicy",
    "Invitation",
    "LinkCode",
    "OidcFlow",
    "OidcIdentity",
    "PasskeyChallenge",
    "PasskeyCredential",
    "PasskeyUser",
    "PendingLogin",
    "RecoveryCode",
    "RenewalLease",
    "RetiredInstance",
    "SingleUse",
    "ThrottleEntry",
    "TotpCredential",
    "UTCDateTime",
    "User",
    "WebSession",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Lengths of the text columns, in one place so the service can validate
# input against the same numbers the schema enforces.
EMAIL_MAX = 320
PASSWORD_HASH_MAX = 255
INSTANCE_ID_LEN = 26
INSTANCE_NAME_MAX = 64
PUBLIC_KEY_MAX = 64
SHA256_HEX_LEN = 64
USER_AGENT_MAX = 256
IP_MAX = 64
THROTTLE_KEY_MAX = 160
SEALED_SECRET_MAX = 128
NEXT_PATH_MAX = 2048


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite has no time zone support: SQLAlchemy's SQLite ``DATETIME`` drops
    ``tzinfo`` on the way in and returns naive values. PostgreSQL's
    ``timestamptz`` returns aware values in the session time zone. This
    decorator normalises both to aware UTC so expiry comparisons in Python
    never mix naive and aware values (a ``TypeError`` at best, a silently
    wrong expiry at worst), and refuses naive input outright.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            # Stored as ISO text without offset; always UTC by this rule, so
            # lexical order in SQL equals time order.
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):  # pragma: no cover - driver contract
            raise TypeError(f"expected datetime from the database, got {type(value)!r}")
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base carrying the shared :class:`MetaData`."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SingleUse:
    """Mixin of a row that may be used once: a code, a token, a pending step.

    ``used_at`` is set by the one caller whose :meth:`use` statement, run with
    :func:`homeport.accounts.single_use.consume_once`, matches the unused row.
    """

    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    @classmethod
    def use(cls, *where: ColumnElement[bool], at: datetime) -> Update:
        """The update that uses the row up: it matches only while the row is unused."""
        return update(cls).where(cls.used_at.is_(None), *where).values(used_at=at)


class User(Base):
    """An account on the relay.

    ``email`` is stored normalised (NFKC, stripped, case-folded) and unique,
    so two spellings of one address cannot become two accounts.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX), unique=True)
    password_hash: Mapped[str] = mapped_column(String(PASSWORD_HASH_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    #: False for an account made by a first OpenID sign-in: its password hash
    #: is of a random secret nobody knows, so password sign-in can never match.
    has_password: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())

    def __repr__(self) -> str:  # never include the password hash
        return f"User(id={self.id!r}, email={self.email!r}, disabled={self.disabled!r})"


class Instance(Base):
    """A Home Assistant installation reachable through the relay.

    ``id`` is the tenant host label: 128 random bits, lower-case base32
    (26 characters), so tenant host names cannot be enumerated.
    ``addon_public_key`` is the add-on's Ed25519 key in the canonical text
    form ``ed25519:<base64url, no padding>``; the tunnel hub finds the
    instance by it after the add-on has proven possession of the key.
    """

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(INSTANCE_ID_LEN), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    name: Mapped[str] = mapped_column(String(INSTANCE_NAME_MAX))
    addon_public_key: Mapped[str] = mapped_column(String(PUBLIC_KEY_MAX), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_connected_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: Set when the tunnel drops; "connected" means connected after the last drop.
    last_disconnected_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    @property
    def connected(self) -> bool:
        return self.last_connected_at is not None and (
            self.last_disconnected_at is None or self.last_disconnected_at < self.last_connected_at
        )

    def __repr__(self) -> str:
        return f"Instance(id={self.id!r}, owner_id={self.owner_id!r}, name={self.name!r})"


class InstanceMember(Base):
    """An account allowed on an instance besides its owner: the *member* role.

    A member may open the home, nothing more (:mod:`homeport.accounts.sharing`).
    ``expires_at``: when the membership ends by itself (a guest for a weekend);
    ``None``: until removed. An ended membership opens nothing, at once; the
    relay's sweep then deletes it and cuts what it had open.
    """

    __tablename__ = "instance_members"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)


class WebSession(Base):
    """A browser session, on the account site or on one tenant host.

    Only ``token_hash`` (SHA-256 hex of the 256-bit token) is stored, so a
    leaked database or backup does not hand out live sessions.
    """

    __tablename__ = "web_sessions"
    __table_args__ = (
        CheckConstraint("kind IN ('account', 'tenant')", name="kind"),
        CheckConstraint(
            "(kind = 'tenant' AND instance_id IS NOT NULL)"
            " OR (kind = 'account' AND instance_id IS NULL)",
            name="tenant_instance",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    instance_id: Mapped[str | None] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    idle_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    absolute_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    user_agent: Mapped[str] = mapped_column(String(USER_AGENT_MAX))
    ip: Mapped[str] = mapped_column(String(IP_MAX))
    #: For a tenant session: the account session whose hand-off created it, so
    #: signing out of the account site ends it too. No foreign key: a purged
    #: parent leaves a harmless dangling number.
    parent_session_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    #: Whether the sign-in behind this session passed a second factor (for a
    #: tenant session: the account session it was handed off from).
    second_factor: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    def __repr__(self) -> str:  # never include the token hash
        return (
            f"WebSession(id={self.id!r}, user_id={self.user_id!r}, kind={self.kind!r}, "
            f"instance_id={self.instance_id!r})"
        )


class LinkCode(SingleUse, Base):
    """A short-lived, single-use code that links an add-on key to an account."""

    __tablename__ = "link_codes"

    code_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), primary_key=True)
    addon_public_key: Mapped[str] = mapped_column(String(PUBLIC_KEY_MAX), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class HandoffCode(SingleUse, Base):
    """A one-time code carrying a login from the account site to a tenant host.

    Bound to the user, the instance, and a hash of a browser state value so
    a code that leaks (history, referrer, logs) is useless in another
    browser or on another tenant host.
    """

    __tablename__ = "handoff_codes"

    code_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    binding_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: The account session that asked for the hand-off (``None`` for codes
    #: issued without one); becomes the tenant session's ``parent_session_id``.
    parent_session_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class ThrottleEntry(Base):
    """Abuse-control state for one key (see :mod:`homeport.accounts.throttle`).

    ``key`` names what is counted, e.g. ``pw:acct:<sha256 of the email>`` or
    ``pw:net:<IPv4 address or IPv6 /64>``; it never holds an email or a
    password in clear. ``failures`` is the consecutive-failure count (or the
    count in the current window), ``window_start`` when counting began, and
    ``next_allowed_at`` the earliest time the next attempt is allowed.
    """

    __tablename__ = "throttle"

    key: Mapped[str] = mapped_column(String(THROTTLE_KEY_MAX), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    next_allowed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class TotpCredential(Base):
    """An account's TOTP authenticator (RFC 6238); one per account.

    ``secret_sealed`` is the 160-bit seed sealed by
    :class:`homeport.accounts.secretbox.SecretBox` with the row id
    (``user_id``) as associated data; the key is outside the database.
    ``enabled_at`` is ``None`` until enrolment is confirmed with one valid
    code. ``last_step`` is the last accepted time step: any code for that
    step or an earlier one is refused (replay).
    """

    __tablename__ = "totp_credentials"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    secret_sealed: Mapped[bytes] = mapped_column(LargeBinary(SEALED_SECRET_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_step: Mapped[int | None] = mapped_column(Integer, nullable=True)


class RecoveryCode(SingleUse, Base):
    """A single-use recovery code (SHA-256 hex of a 120-bit random code)."""

    __tablename__ = "recovery_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PendingLogin(SingleUse, Base):
    """A sign-in that passed the password and waits for its second factor.

    Bound to a random cookie (only its SHA-256 is stored), short-lived and
    single use; it is not a session and opens nothing by itself.
    """

    __tablename__ = "pending_logins"

    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    next_path: Mapped[str] = mapped_column(String(NEXT_PATH_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


# ------------------------------------------------------------- sharing (issue 3)
# Invitations, app links, per-instance policy and retired tenant names; the rules
# live in :mod:`homeport.accounts.sharing`.

APP_LINK_NAME_MAX = 64


class Invitation(Base):
    """An owner's invitation of a person (by email address) to one instance.

    ``token_hash`` is the SHA-256 of the 256-bit accept token; the token itself is
    shown to the owner once, in the accept link. Pending while ``accepted_at`` and
    ``revoked_at`` are both ``None`` and ``expires_at`` (if any) is in the future.
    """

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(EMAIL_MAX))
    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), unique=True)
    invited_by: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    accepted_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )


class AppLink(Base):
    """A companion-app link: host ``<label>.<tenant-domain>`` that opens one instance.

    Only ``label_hash`` (SHA-256 of the 160-bit random label) is stored, so the
    database does not hand out working links; the host is found by its hash.
    """

    __tablename__ = "app_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), index=True
    )
    label_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), unique=True)
    name: Mapped[str] = mapped_column(String(APP_LINK_NAME_MAX))
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    #: When the link stops working by itself; ``None``: until revoked.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)


class InstancePolicy(Base):
    """Owner settings of an instance that change who may open it."""

    __tablename__ = "instance_policies"

    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    require_second_factor: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RetiredInstance(Base):
    """The id (tenant host label) of an unlinked instance: never issued again (R-MT-13)."""

    __tablename__ = "retired_instances"

    id: Mapped[str] = mapped_column(String(INSTANCE_ID_LEN), primary_key=True)
    retired_at: Mapped[datetime] = mapped_column(UTCDateTime())


# WebAuthn limits: credential ids are at most 1023 bytes (WebAuthn L3 §5.8.3 note);
# COSE public keys of the algorithms we accept are far below 1 KiB.
CREDENTIAL_ID_MAX = 1023
COSE_KEY_MAX = 1024
PASSKEY_NAME_MAX = 64


class PasskeyUser(Base):
    """The WebAuthn user handle of an account: 32 random bytes, never the email or id.

    Authenticators store it with a discoverable credential and hand it back at
    sign-in; a random handle reveals nothing about the account to whoever reads it.
    """

    __tablename__ = "passkey_users"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    handle: Mapped[bytes] = mapped_column(LargeBinary(64), unique=True)


class PasskeyCredential(Base):
    """A passkey (WebAuthn public-key credential) of an account: public data only.

    ``sign_count`` is the authenticator's last signature counter; a response that
    does not move it forward (when either side is non-zero) is refused as a
    possible clone.
    """

    __tablename__ = "passkey_credentials"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    credential_id: Mapped[bytes] = mapped_column(LargeBinary(CREDENTIAL_ID_MAX), unique=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(COSE_KEY_MAX))
    sign_count: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(PASSKEY_NAME_MAX))
    backed_up: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PasskeyChallenge(Base):
    """A WebAuthn ceremony in progress: its challenge, bound to a browser cookie.

    Only the cookie token's SHA-256 is stored; a challenge is used once (deleted
    when checked, right or wrong) and lives a few minutes. ``purpose`` keeps a
    registration challenge from completing a sign-in and the other way round.
    """

    __tablename__ = "passkey_challenges"
    __table_args__ = (
        CheckConstraint("purpose IN ('register', 'signin', 'second')", name="purpose"),
    )

    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True
    )
    challenge: Mapped[bytes] = mapped_column(LargeBinary(64))
    name: Mapped[str] = mapped_column(String(PASSKEY_NAME_MAX), default="")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


# --------------------------------------------------------------- OIDC sign-in

ISSUER_MAX = 255
SUBJECT_MAX = 255
PROVIDER_NAME_MAX = 32


class OidcIdentity(Base):
    """An account's identity at an OpenID provider: (issuer, subject), never the email.

    ``email`` is what the provider said when the identity was linked, kept for
    display only; it is never used to find the account.
    """

    __tablename__ = "oidc_identities"
    __table_args__ = (UniqueConstraint("issuer", "subject", name="uq_oidc_identities_issuer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(PROVIDER_NAME_MAX))
    issuer: Mapped[str] = mapped_column(String(ISSUER_MAX))
    subject: Mapped[str] = mapped_column(String(SUBJECT_MAX))
    email: Mapped[str] = mapped_column(String(EMAIL_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class OidcFlow(Base):
    """One authorization-code flow with an OpenID provider, from start to sign-in.

    ``state_hash`` finds the flow when the provider sends the browser back;
    ``binding_hash`` is the SHA-256 of a random value in a ``__Host-`` cookie
    of the browser that started it, so only that browser can finish it.
    The nonce is kept as a hash, the PKCE verifier sealed (it must be sent).
    ``ticket_hash``: the one-time handle the callback hands the browser that
    delivered it, for the finishing GET (see ``accounts/oidc.py``).
    ``status``: ``started`` → ``claimed`` (the provider sent the browser back)
    → ``verified`` (ID token checked, identity below filled in) → ``done``;
    or ``link`` when the identity's email belongs to an existing account that
    must be signed in to before linking; or ``confirm`` when a link started
    from the settings page waits for the person's confirming POST.
    """

    __tablename__ = "oidc_flows"
    __table_args__ = (
        CheckConstraint("purpose IN ('signin', 'link')", name="purpose"),
        CheckConstraint(
            "status IN ('started', 'claimed', 'verified', 'link', 'confirm', 'done')",
            name="status",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), unique=True)
    binding_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), index=True)
    ticket_hash: Mapped[str | None] = mapped_column(
        String(SHA256_HEX_LEN), unique=True, nullable=True
    )
    nonce_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN))
    verifier_sealed: Mapped[bytes] = mapped_column(LargeBinary(SEALED_SECRET_MAX))
    provider: Mapped[str] = mapped_column(String(PROVIDER_NAME_MAX))
    purpose: Mapped[str] = mapped_column(String(8))
    #: ``link``: the signed-in account; status ``link``: the account owning the email.
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True
    )
    next_path: Mapped[str] = mapped_column(String(NEXT_PATH_MAX))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    issuer: Mapped[str | None] = mapped_column(String(ISSUER_MAX), nullable=True)
    subject: Mapped[str | None] = mapped_column(String(SUBJECT_MAX), nullable=True)
    email: Mapped[str | None] = mapped_column(String(EMAIL_MAX), nullable=True)
    email_verified: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


# Audit log (homeport.accounts.audit): lengths of its text columns.
AUDIT_KIND_MAX = 48
AUDIT_DEVICE_MAX = 64
AUDIT_DETAIL_MAX = 200
AUDIT_FACTOR_MAX = 32


class AuditEvent(Base):
    """One audit-log event: metadata only (see :mod:`homeport.accounts.audit`).

    ``user_id`` and ``instance_id`` carry no foreign keys on purpose: the
    record of an unlinked home or a removed member must outlive the row it
    names, until the 180-day purge.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    kind: Mapped[str] = mapped_column(String(AUDIT_KIND_MAX))
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    instance_id: Mapped[str | None] = mapped_column(
        String(INSTANCE_ID_LEN), nullable=True, index=True
    )
    ip: Mapped[str] = mapped_column(String(IP_MAX))
    device: Mapped[str] = mapped_column(String(AUDIT_DEVICE_MAX))
    factor: Mapped[str | None] = mapped_column(String(AUDIT_FACTOR_MAX), nullable=True)
    session_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str] = mapped_column(String(AUDIT_DETAIL_MAX))


# --------------------------------------------------------------- email (issue 3, R-EML/R-PWD-05)


class EmailSignin(SingleUse, Base):
    """A sign-in that passed every factor and waits for the code mailed for a new network.

    The cookie token is stored only as its SHA-256; ``code_hash`` is the
    SHA-256 of the token *and* the code, so the code is bound to this pending
    sign-in and cannot be brute-forced offline from a leaked database (the
    token is not in it). ``failures`` counts wrong codes across resends.
    """

    __tablename__ = "email_signins"

    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    next_path: Mapped[str] = mapped_column(String(NEXT_PATH_MAX))
    code_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN))
    failures: Mapped[int] = mapped_column(Integer)
    sends: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_sent_at: Mapped[datetime] = mapped_column(UTCDateTime())
    code_expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SigninAlert(SingleUse, Base):
    """The single-use "this wasn't me" link of one sign-in mail (SHA-256 of its token)."""

    __tablename__ = "signin_alerts"

    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class KnownDevice(Base):
    """A browser that completed a sign-in to this account (SHA-256 of its device cookie)."""

    __tablename__ = "known_devices"

    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class KnownNetwork(Base):
    """A client network (IPv4 address or IPv6 /64) this account signed in from."""

    __tablename__ = "known_networks"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    network: Mapped[str] = mapped_column(String(IP_MAX), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PasswordReset(SingleUse, Base):
    """A single-use, short-lived password reset link (SHA-256 of its token)."""

    __tablename__ = "password_resets"

    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class PendingSignup(Base):
    """A sign-up waiting for its emailed link; the account is created only when it is used.

    Each sign-up is its own row with its own password hash (Argon2id) and
    link token (SHA-256), so whoever opens a link gets the password typed in
    *that* sign-up: nobody can pre-register someone else's address and have
    their own password adopted.
    """

    __tablename__ = "pending_signups"

    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), primary_key=True)
    email: Mapped[str] = mapped_column(String(EMAIL_MAX), index=True)
    password_hash: Mapped[str] = mapped_column(String(PASSWORD_HASH_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


# ------------------------------------------------------- email change (issue 16)


class EmailChange(SingleUse, Base):
    """A change of an account's address, waiting for the code mailed to the new address.

    Bound to a browser cookie (only its SHA-256, ``token_hash``, is stored) and to
    the account; ``code_hash`` is the SHA-256 of the cookie token *and* the code, so a
    database reader (who lacks the token) cannot brute-force the code offline.
    """

    __tablename__ = "email_changes"

    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    new_email: Mapped[str] = mapped_column(String(EMAIL_MAX))
    code_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN))
    failures: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EmailChangeUndo(SingleUse, Base):
    """The "this was not me" link mailed to the old address after a change (SHA-256 of it).

    Using it puts ``old_email`` back and ends every session; it lives
    :data:`homeport.accounts.email_change.UNDO_LIFETIME`.
    """

    __tablename__ = "email_change_undos"

    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX_LEN), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    old_email: Mapped[str] = mapped_column(String(EMAIL_MAX))
    new_email: Mapped[str] = mapped_column(String(EMAIL_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class InstanceIntegrations(Base):
    """Which integrations on the internet may reach an instance without a Homeport session.

    No row, or both switches off, is the default: nothing but signed-in people
    and app links get in (:mod:`homeport.accounts.integrations`).
    """

    __tablename__ = "instance_integrations"

    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    webhooks: Mapped[bool] = mapped_column(Boolean, default=False)
    voice: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OfflineAlert(Base):
    """An owner's wish to be mailed when a home stays offline, and where the outage is.

    ``alerted_at`` is set when the "offline" mail of the current outage went out
    and cleared when the "back online" mail did: one pair of mails per outage.
    """

    __tablename__ = "offline_alerts"

    instance_id: Mapped[str] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    after_minutes: Mapped[int] = mapped_column(Integer)
    alerted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CertificateRow(Base):
    """A certificate every relay node serves (``homeport.tls.store``), one row per kind.

    The private key is sealed with the secret-box key, its associated data
    binding it to the kind, version, fencing token and chain; ``fence`` is the
    renewal lease token it was written under (a write with an older one is
    refused), ``version`` goes up by one on every write.
    """

    __tablename__ = "certificates"
    __table_args__ = (CheckConstraint("kind IN ('account', 'tenant')", name="kind"),)

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    fence: Mapped[int] = mapped_column(BigInteger)
    chain_pem: Mapped[str] = mapped_column(Text)
    key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    written_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class RenewalLease(Base):
    """Who may renew certificates now (``homeport.tls.lease``): one row, ``acme``.

    ``token`` goes up by one every time the lease changes hands (the fencing token).
    """

    __tablename__ = "renewal_leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    token: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AcmeChallenge(Base):
    """An HTTP-01 key authorization being validated now, answerable by every node.

    Not a secret (the CA fetches it over plain HTTP); kept here so that the node the
    load balancer sends the CA to can answer for the node that placed the order.
    """

    __tablename__ = "acme_challenges"

    token: Mapped[str] = mapped_column(String(256), primary_key=True)
    key_authorization: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
