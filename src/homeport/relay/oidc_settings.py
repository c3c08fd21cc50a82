"""Settings of the OpenID providers people may sign in with (Google, Apple, generic).

Each provider is configured by the operator (flag, ``HOMEPORT_<NAME>`` environment
variable or the ``[relay]`` TOML section, like every relay option); a provider
appears on the sign-in page only when it is configured. Secrets are read from
files so they never show up in a process listing or a shell history.

* **Google**: ``google_client_id`` + ``google_client_secret_file``; issuer
  ``https://accounts.google.com`` (Google also writes ``accounts.google.com``
  into ID tokens, so both spellings are accepted for it, and only for it).
* **Apple**: ``apple_client_id`` (the Services ID), ``apple_team_id``,
  ``apple_key_id`` and ``apple_private_key_file`` (the ``.p8`` ES256 key): the
  client secret is a short-lived ES256 JWT minted for every token request, as
  Apple requires. Apple answers with ``response_mode=form_post``.
* **Generic**: ``oidc_issuer`` + ``oidc_client_id`` + ``oidc_client_secret_file``
  (optional ``oidc_label``, ``oidc_discovery_url``, ``oidc_response_mode``); the
  issuer is pinned: discovery must name exactly it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

__all__ = [
    "APPLE_ISSUER",
    "GOOGLE_ISSUER",
    "AppleKey",
    "OidcProvider",
    "OidcSettingsError",
    "add_oidc_arguments",
    "apple_provider",
    "check_provider_url",
    "google_provider",
    "is_loopback_url",
    "providers_from_options",
]

GOOGLE_ISSUER: Final = "https://accounts.google.com"
APPLE_ISSUER: Final = "https://appleid.apple.com"
_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "::1", "localhost"})
#: Paths under /signin/oidc/ and /security/oidc/ that are not providers.
_RESERVED_NAMES: Final = frozenset({"finish", "link", "unlink", "confirm"})

ResponseMode = Literal["query", "form_post"]


class OidcSettingsError(ValueError):
    """A provider is configured incompletely or wrongly; the message says how."""


def is_loopback_url(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOOPBACK_HOSTS


def check_provider_url(what: str, url: str) -> None:
    """Provider URLs must be HTTPS; plain HTTP only to this machine (test providers)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback_url(url):
        return
    raise OidcSettingsError(f"{what} must be an https:// URL: {url!r}")


@dataclass(frozen=True, slots=True)
class AppleKey:
    """What Apple needs to accept our client secret JWT (ES256, signed with ``private_key``)."""

    team_id: str
    key_id: str
    private_key_pem: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class OidcProvider:
    """One configured OpenID provider."""

    #: Short name in URLs (``/signin/oidc/<name>``): ``google``, ``apple`` or a slug.
    name: str
    #: Shown on the button: "Sign in with <label>".
    label: str
    #: The pinned issuer: discovery and every ID token must name exactly this.
    issuer: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    discovery_url: str | None = None
    scopes: tuple[str, ...] = ("openid", "email")
    response_mode: ResponseMode = "query"
    #: Other spellings of the issuer that ID tokens may carry (Google only).
    token_issuers: tuple[str, ...] = ()
    apple: AppleKey | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name) or self.name in _RESERVED_NAMES:
            raise OidcSettingsError(f"provider name must be a short lower-case slug: {self.name!r}")
        check_provider_url("the issuer", self.issuer)
        if self.discovery_url is not None:
            check_provider_url("the discovery URL", self.discovery_url)
        if not self.client_id:
            raise OidcSettingsError(f"{self.label}: the client id is missing")
        if self.client_secret is None and self.apple is None:
            raise OidcSettingsError(f"{self.label}: the client secret file is missing")
        if self.response_mode not in ("query", "form_post"):
            raise OidcSettingsError(
                f"response mode must be query or form_post: {self.response_mode!r}"
            )

    @property
    def metadata_url(self) -> str:
        return self.discovery_url or self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    @property
    def accepted_issuers(self) -> tuple[str, ...]:
        return (self.issuer, *self.token_issuers)


def google_provider(
    client_id: str, client_secret: str, *, issuer: str = GOOGLE_ISSUER
) -> OidcProvider:
    return OidcProvider(
        name="google",
        label="Google",
        issuer=issuer,
        client_id=client_id,
        client_secret=client_secret,
        token_issuers=("accounts.google.com",) if issuer == GOOGLE_ISSUER else (),
    )


def apple_provider(
    client_id: str, key: AppleKey, *, issuer: str = APPLE_ISSUER, discovery_url: str | None = None
) -> OidcProvider:
    return OidcProvider(
        name="apple",
        label="Apple",
        issuer=issuer,
        client_id=client_id,
        discovery_url=discovery_url,
        response_mode="form_post",
        apple=key,
    )


def _read_secret(path: Path | None, what: str) -> str:
    if path is None:
        raise OidcSettingsError(f"{what} is missing")
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise OidcSettingsError(f"cannot read {what} {str(path)!r}: {exc.strerror}") from exc
    if not value:
        raise OidcSettingsError(f"{what} {str(path)!r} is empty")
    return value


def providers_from_options(
    get: Callable[[str], Any], path: Callable[[str], Path | None]
) -> tuple[OidcProvider, ...]:
    """The providers the operator configured (``get``/``path`` look options up)."""
    found: list[OidcProvider] = []
    if get("google_client_id"):
        secret = _read_secret(path("google_client_secret_file"), "--google-client-secret-file")
        found.append(google_provider(str(get("google_client_id")), secret))
    if get("apple_client_id"):
        team, key_id = get("apple_team_id"), get("apple_key_id")
        if not team or not key_id:
            raise OidcSettingsError("Apple sign-in needs --apple-team-id and --apple-key-id")
        pem = _read_secret(path("apple_private_key_file"), "--apple-private-key-file")
        found.append(
            apple_provider(str(get("apple_client_id")), AppleKey(str(team), str(key_id), pem))
        )
    if get("oidc_issuer"):
        secret = _read_secret(path("oidc_client_secret_file"), "--oidc-client-secret-file")
        found.append(
            OidcProvider(
                name="oidc",
                label=str(get("oidc_label") or "single sign-on"),
                issuer=str(get("oidc_issuer")),
                client_id=str(get("oidc_client_id") or ""),
                client_secret=secret,
                discovery_url=get("oidc_discovery_url") or None,
                response_mode=str(get("oidc_response_mode") or "query"),  # type: ignore[arg-type]
            )
        )
    return tuple(found)


def add_oidc_arguments(parser: Any) -> None:
    """The relay's sign-in provider flags (see docs/operations.md)."""
    add = parser.add_argument
    add("--google-client-id", dest="google_client_id", help="Google OAuth client id")
    add(
        "--google-client-secret-file",
        dest="google_client_secret_file",
        help="file holding the Google client secret (mode 0600)",
    )
    add("--apple-client-id", dest="apple_client_id", help="Apple Services ID")
    add("--apple-team-id", dest="apple_team_id", help="your 10-character Apple team id")
    add("--apple-key-id", dest="apple_key_id", help="id of the Sign in with Apple key")
    add("--apple-private-key-file", dest="apple_private_key_file", help="Apple .p8 key (ES256)")
    add("--oidc-issuer", dest="oidc_issuer", help="generic OpenID provider's issuer (pinned)")
    add("--oidc-client-id", dest="oidc_client_id", help="the generic provider's client id")
    add(
        "--oidc-client-secret-file",
        dest="oidc_client_secret_file",
        help="file holding its client secret (mode 0600)",
    )
    add("--oidc-label", dest="oidc_label", help='button text: "Sign in with <label>"')
    add(
        "--oidc-discovery-url",
        dest="oidc_discovery_url",
        help="default <issuer>/.well-known/openid-configuration",
    )
    add(
        "--oidc-response-mode",
        dest="oidc_response_mode",
        choices=["query", "form_post"],
        help="how the provider answers: query (default) or form_post",
    )
