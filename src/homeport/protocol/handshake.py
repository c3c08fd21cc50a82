"""The tunnel handshake: relay proves itself, then the add-on proves itself.

Sans-I/O: text in, text out, no sockets and no asyncio. The I/O layer sends
each returned string as one WebSocket *text* message, feeds each received
text message to the next method, enforces timeouts, and only after a
:class:`Welcome` starts the binary tunnel frames.

Messages (JSON objects, binary values as unpadded base64url "B64")::

    add-on -> relay  {"type":"hello","protocol":"homeport-tunnel","versions":[1,2],
                      "challenge":B64(32)}
    relay -> add-on  {"type":"server_proof","version":2,"host":HOST,"key_id":KEYID,
                      "nonce":B64(32),"signature":B64(64)}
    add-on -> relay  {"type":"client_proof","public_key":"ed25519:...",
                      "signature":B64(64),"agent":"homeport-addon/0.1.0"}
    relay -> add-on  {"type":"welcome","instance_id":ID,"url":URL,"settings":{...}}
                   | {"type":"unlinked","link_code":CODE,"expires_in":SECONDS}
                   | {"type":"error","code":CODE,"message":TEXT}

Signed transcripts (each field prefixed with its u16 big-endian length)::

    relay:  b"homeport-relay-proof-v1\\0" challenge host nonce cert_sha256
    add-on: b"homeport-addon-proof-v1\\0" nonce challenge host cert_sha256 addon_public_key

``cert_sha256`` is SHA-256 of the relay's TLS leaf certificate (DER), each
side using its own view (:mod:`homeport.tls.context`). What the checks stop:

- forged relay: only the holder of a pinned Ed25519 key can sign;
- replay of an old proof: the add-on's challenge is fresh per connection;
- man in the middle with another valid certificate relaying the challenge
  to the real relay: the relay signs the hash of *its* certificate, the
  add-on checks the hash of the one *it* saw, and they differ;
- downgrade: the add-on accepts only a version it offered and supports;
- unpinned (e.g. retired) relay key: its key id is not in the pinned set;
- a stolen add-on proof reused elsewhere: it signs the relay's fresh nonce,
  this host and this certificate;
- cross-use of one signature for the other role: distinct context strings.

Not stopped: an attacker holding the relay's real TLS private key *and*
able to reach the real relay (the hashes then match). That needs the relay
host itself compromised; rotate both keys if it is.

Errors raise :class:`HandshakeError` with a short machine code and a human
message that never contains challenges, nonces, signatures or private keys.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import NoReturn, TypeAlias
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from homeport import __version__
from homeport.keys import (
    b64url_decode,
    b64url_encode,
    key_id,
    parse_public_key,
    public_key_raw,
    public_key_text,
)

__all__ = [
    "ADDON_PROOF_CONTEXT",
    "CHALLENGE_SIZE",
    "DEFAULT_AGENT",
    "MAX_MESSAGE_SIZE",
    "NONCE_SIZE",
    "PROTOCOL_NAME",
    "RELAY_PROOF_CONTEXT",
    "SUPPORTED_VERSIONS",
    "AddonHandshake",
    "HandshakeError",
    "HandshakeErrorCode",
    "JSONValue",
    "RelayHandshake",
    "RelayRefused",
    "Unlinked",
    "Welcome",
    "addon_transcript",
    "normalise_host",
    "relay_transcript",
]

PROTOCOL_NAME = "homeport-tunnel"
#: Protocol versions this side speaks; they differ only in how heads carry their
#: header fields (``heads.HEADER_FORMATS``), and the newest common one is used.
SUPPORTED_VERSIONS: tuple[int, ...] = (1, 2)
MAX_MESSAGE_SIZE = 8 * 1024
CHALLENGE_SIZE = 32
NONCE_SIZE = 32
SIGNATURE_SIZE = 64
CERT_HASH_SIZE = 32
RELAY_PROOF_CONTEXT = b"homeport-relay-proof-v1\x00"
ADDON_PROOF_CONTEXT = b"homeport-addon-proof-v1\x00"
DEFAULT_AGENT = f"homeport-addon/{__version__}"

MAX_OFFERED_VERSIONS = 16
MAX_EXPIRES_IN = 24 * 3600
MAX_URL_LENGTH = 2048
MAX_ERROR_MESSAGE_LENGTH = 512

JSONValue: TypeAlias = "str | int | float | bool | list[JSONValue] | dict[str, JSONValue] | None"

_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_LINK_CODE_RE = re.compile(r"[A-Za-z0-9-]{4,64}")
_ERROR_CODE_RE = re.compile(r"[a-z0-9_.-]{1,64}")
_AGENT_RE = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,127}")
_PRINTABLE_RE = re.compile(r"[^\x00-\x1f\x7f]*")  # no control chars: no log injection
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class HandshakeErrorCode(enum.StrEnum):
    MALFORMED = "malformed"  # not JSON, wrong fields or types, bad base64/lengths
    TOO_LARGE = "too_large"  # over MAX_MESSAGE_SIZE
    UNEXPECTED_MESSAGE = "unexpected_message"  # a known type, at the wrong time
    UNKNOWN_TYPE = "unknown_type"
    OUT_OF_ORDER = "out_of_order"  # a method called twice or before its turn
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    UNSUPPORTED_VERSION = "unsupported_version"  # stops downgrade
    HOST_MISMATCH = "host_mismatch"
    RELAY_KEY_NOT_PINNED = "relay_key_not_pinned"
    BAD_RELAY_SIGNATURE = "bad_relay_signature"
    BAD_ADDON_SIGNATURE = "bad_addon_signature"
    RELAY_REFUSED = "relay_refused"  # relay sent "error" before proving itself


class HandshakeError(Exception):
    """The handshake failed; the connection must be closed.

    ``code`` is stable and machine-readable; ``message`` is for logs and
    carries no secret material.
    """

    def __init__(self, code: HandshakeErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Welcome:
    """The add-on is linked: tunnel frames may start."""

    instance_id: str
    url: str
    settings: dict[str, JSONValue] = field(default_factory=dict)
    #: The protocol version the relay chose in its proof (what the frames speak).
    version: int = 1


@dataclass(frozen=True, slots=True)
class Unlinked:
    """The add-on's key belongs to no account yet: show ``link_code`` locally."""

    link_code: str
    expires_in: int


@dataclass(frozen=True, slots=True)
class RelayRefused:
    """The (proven) relay refused the add-on, e.g. revoked or rate-limited."""

    code: str
    message: str


HandshakeResult: TypeAlias = Welcome | Unlinked | RelayRefused


# -- transcripts ---------------------------------------------------------------


def _length_prefixed(context: bytes, fields: Iterable[bytes]) -> bytes:
    parts = [context]
    for value in fields:
        if len(value) > 0xFFFF:  # pragma: no cover - all fields are small
            raise ValueError("transcript field too long")
        parts.append(len(value).to_bytes(2, "big"))
        parts.append(value)
    return b"".join(parts)


def relay_transcript(challenge: bytes, host: str, nonce: bytes, cert_sha256: bytes) -> bytes:
    """The bytes the relay signs (domain-separated, length-prefixed)."""
    return _length_prefixed(
        RELAY_PROOF_CONTEXT, (challenge, host.encode("ascii"), nonce, cert_sha256)
    )


def addon_transcript(
    nonce: bytes, challenge: bytes, host: str, cert_sha256: bytes, addon_key: Ed25519PublicKey
) -> bytes:
    """The bytes the add-on signs (domain-separated, length-prefixed)."""
    return _length_prefixed(
        ADDON_PROOF_CONTEXT,
        (nonce, challenge, host.encode("ascii"), cert_sha256, public_key_raw(addon_key)),
    )


def normalise_host(host: str) -> str:
    """Canonical host for transcripts: lower-case ASCII (IDNA), no trailing dot.

    Both sides sign/verify over the same canonical bytes, so "Relay.Example."
    and "relay.example" are one host and nothing else is. IP literals are
    allowed (development) in their compressed form, without brackets.
    """
    value = host.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    value = value.rstrip(".")
    try:
        value = value.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"invalid host name: {host!r}") from None
    if not 0 < len(value) <= 253 or not all(_LABEL_RE.fullmatch(p) for p in value.split(".")):
        raise ValueError(f"invalid host name: {host!r}")
    return value


def _check_cert_hash(cert_sha256: bytes) -> bytes:
    if not isinstance(cert_sha256, bytes) or len(cert_sha256) != CERT_HASH_SIZE:
        raise ValueError("cert_sha256 must be the 32-byte SHA-256 of the TLS leaf certificate")
    return cert_sha256


# -- strict message parsing -------------------------------------------------------


def _malformed(message: str) -> HandshakeError:
    return HandshakeError(HandshakeErrorCode.MALFORMED, message)


def _reject_duplicates(pairs: list[tuple[str, JSONValue]]) -> dict[str, JSONValue]:
    # Duplicate keys are ambiguous (parsers disagree on which wins): refuse.
    result: dict[str, JSONValue] = {}
    for name, value in pairs:
        if name in result:
            raise _malformed(f"duplicate field {name!r}")
        result[name] = value
    return result


def _reject_constant(name: str) -> NoReturn:
    raise _malformed(f"non-standard JSON constant {name}")


_KNOWN_TYPES = frozenset({"hello", "server_proof", "client_proof", "welcome", "unlinked", "error"})

_FIELDS: dict[str, frozenset[str]] = {
    "hello": frozenset({"type", "protocol", "versions", "challenge"}),
    "server_proof": frozenset({"type", "version", "host", "key_id", "nonce", "signature"}),
    "client_proof": frozenset({"type", "public_key", "signature", "agent"}),
    "welcome": frozenset({"type", "instance_id", "url", "settings"}),
    "unlinked": frozenset({"type", "link_code", "expires_in"}),
    "error": frozenset({"type", "code", "message"}),
}


def _parse(text: str, expected: frozenset[str]) -> dict[str, JSONValue]:
    """Parse one message: size, JSON, object, known type, exact field set.

    Size is checked before parsing so a flood of bytes costs nothing; the
    exact field set means no field is silently ignored.
    """
    if not isinstance(text, str):
        raise _malformed("handshake messages are WebSocket text messages")
    if len(text) > MAX_MESSAGE_SIZE or len(text.encode("utf-8")) > MAX_MESSAGE_SIZE:
        raise HandshakeError(
            HandshakeErrorCode.TOO_LARGE, f"message exceeds {MAX_MESSAGE_SIZE} bytes"
        )
    try:
        data = json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise _malformed("not valid JSON") from None
    if not isinstance(data, dict):
        raise _malformed("message must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in _KNOWN_TYPES:
        raise HandshakeError(HandshakeErrorCode.UNKNOWN_TYPE, "unknown message type")
    if kind not in expected:
        raise HandshakeError(
            HandshakeErrorCode.UNEXPECTED_MESSAGE,
            f"unexpected {kind!r} message (expected {' or '.join(sorted(expected))})",
        )
    fields = set(data)
    if fields != _FIELDS[kind]:
        missing = sorted(_FIELDS[kind] - fields)
        extra = sorted(fields - _FIELDS[kind])
        raise _malformed(f"{kind}: missing fields {missing}, unknown fields {extra}")
    return data


def _str(data: dict[str, JSONValue], name: str) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise _malformed(f"{name!r} must be a string")
    return value


def _int(data: dict[str, JSONValue], name: str) -> int:
    value = data[name]
    if not isinstance(value, int) or isinstance(value, bool):
        raise _malformed(f"{name!r} must be an integer")
    return value


def _bytes(data: dict[str, JSONValue], name: str, length: int) -> bytes:
    try:
        return b64url_decode(_str(data, name), length=length)
    except ValueError:
        raise _malformed(f"{name!r} must be {length} bytes of unpadded base64url") from None


def _match(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.fullmatch(value):
        raise _malformed(f"invalid {what}")
    return value


def _encode(message: dict[str, JSONValue]) -> str:
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    if len(text) > MAX_MESSAGE_SIZE:
        raise HandshakeError(
            HandshakeErrorCode.TOO_LARGE, f"message exceeds {MAX_MESSAGE_SIZE} bytes"
        )
    return text


# -- result messages (validated the same way on both sides) -----------------------


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if len(url) > MAX_URL_LENGTH or parts.scheme != "https" or not parts.hostname:
        raise _malformed("'url' must be an https URL")
    if not _PRINTABLE_RE.fullmatch(url) or " " in url:
        raise _malformed("'url' contains forbidden characters")
    return url


def _check_error_text(code: str, message: str) -> tuple[str, str]:
    _match(_ERROR_CODE_RE, code, "error code")
    if len(message) > MAX_ERROR_MESSAGE_LENGTH or not _PRINTABLE_RE.fullmatch(message):
        raise _malformed("invalid error message")
    return code, message


def _check_expires_in(expires_in: int) -> int:
    if not 1 <= expires_in <= MAX_EXPIRES_IN:
        raise _malformed(f"'expires_in' must be between 1 and {MAX_EXPIRES_IN} seconds")
    return expires_in


def _parse_result(text: str) -> HandshakeResult:
    data = _parse(text, frozenset({"welcome", "unlinked", "error"}))
    kind = data["type"]
    if kind == "welcome":
        settings = data["settings"]
        if not isinstance(settings, dict):
            raise _malformed("'settings' must be an object")
        return Welcome(
            instance_id=_match(_INSTANCE_ID_RE, _str(data, "instance_id"), "instance id"),
            url=_check_url(_str(data, "url")),
            settings=settings,
        )
    if kind == "unlinked":
        return Unlinked(
            link_code=_match(_LINK_CODE_RE, _str(data, "link_code"), "link code"),
            expires_in=_check_expires_in(_int(data, "expires_in")),
        )
    code, message = _check_error_text(_str(data, "code"), _str(data, "message"))
    return RelayRefused(code=code, message=message)


# -- state machines -------------------------------------------------------------


class _State(enum.Enum):
    START = enum.auto()
    WAIT_SERVER_PROOF = enum.auto()  # add-on: hello sent
    WAIT_RESULT = enum.auto()  # add-on: client proof sent
    WAIT_CLIENT_PROOF = enum.auto()  # relay: server proof sent
    AUTHENTICATED = enum.auto()  # relay: add-on key verified, decision pending
    DONE = enum.auto()
    FAILED = enum.auto()


class _Machine:
    """One-shot, in-order calls; any error or misuse leaves it FAILED for good."""

    def __init__(self) -> None:
        self._state = _State.START

    def _enter(self, expected: _State, action: str) -> None:
        if self._state is not expected:
            self._state = _State.FAILED
            raise HandshakeError(HandshakeErrorCode.OUT_OF_ORDER, f"{action} called out of order")

    @property
    def failed(self) -> bool:
        return self._state is _State.FAILED

    @property
    def done(self) -> bool:
        return self._state is _State.DONE


class AddonHandshake(_Machine):
    """The add-on's side: dial, verify the relay, then prove ourselves.

    ``host`` is the host name the add-on dialled; ``pinned_keys`` the relay
    public keys it trusts (current + next, for rotation); ``cert_sha256``
    the SHA-256 of the leaf certificate seen in *this* TLS session
    (:func:`homeport.tls.context.peer_certificate_sha256`).
    """

    def __init__(
        self,
        host: str,
        pinned_keys: Iterable[Ed25519PublicKey],
        private_key: Ed25519PrivateKey,
        cert_sha256: bytes,
        *,
        agent: str = DEFAULT_AGENT,
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
    ) -> None:
        super().__init__()
        if not versions or not set(versions) <= set(SUPPORTED_VERSIONS):
            raise ValueError(f"versions must be some of {list(SUPPORTED_VERSIONS)}")
        #: The protocol versions offered in hello (all this side speaks, by default).
        self._versions = tuple(sorted(set(versions)))
        self._host = normalise_host(host)
        self._pinned: dict[str, Ed25519PublicKey] = {}
        for key in pinned_keys:
            kid = key_id(key)
            other = self._pinned.get(kid)
            if other is not None and public_key_raw(other) != public_key_raw(key):
                raise ValueError("two pinned keys share a key id")  # pragma: no cover
            self._pinned[kid] = key
        if not self._pinned:
            raise ValueError("at least one pinned relay key is required")
        self._private_key = private_key
        self._cert_sha256 = _check_cert_hash(cert_sha256)
        if not _AGENT_RE.fullmatch(agent):
            raise ValueError("agent must be 1-128 printable ASCII characters")
        self._agent = agent
        self._challenge = b""
        self.version: int | None = None

    def hello(self) -> str:
        """Start: a fresh 256-bit challenge, so no old proof can be replayed."""
        self._enter(_State.START, "hello()")
        self._challenge = secrets.token_bytes(CHALLENGE_SIZE)
        self._state = _State.WAIT_SERVER_PROOF
        return _encode(
            {
                "type": "hello",
                "protocol": PROTOCOL_NAME,
                "versions": list(self._versions),
                "challenge": b64url_encode(self._challenge),
            }
        )

    def receive_server_proof(self, text: str) -> str:
        """Verify the relay's proof; return our ``client_proof`` message.

        Everything is checked against values this side holds itself (its
        challenge, dialled host, pinned keys, observed certificate hash),
        never against what the relay claims; only the nonce comes from the
        relay, and it is covered by the signature.
        """
        self._enter(_State.WAIT_SERVER_PROOF, "receive_server_proof()")
        try:
            reply = self._verify_server_proof(text)
        except BaseException:
            self._state = _State.FAILED
            raise
        self._state = _State.WAIT_RESULT
        return reply

    def _verify_server_proof(self, text: str) -> str:
        data = _parse(text, frozenset({"server_proof", "error"}))
        if data["type"] == "error":
            # Unauthenticated at this point: report the code only if well-formed.
            code = data.get("code")
            shown = code if isinstance(code, str) and _ERROR_CODE_RE.fullmatch(code) else "?"
            raise HandshakeError(
                HandshakeErrorCode.RELAY_REFUSED,
                f"relay refused before proving itself (code {shown})",
            )
        version = _int(data, "version")
        if version not in self._versions:  # we offered exactly these
            raise HandshakeError(
                HandshakeErrorCode.UNSUPPORTED_VERSION,
                f"relay chose version {version}, we offered {list(self._versions)}",
            )
        host = _str(data, "host")
        if host != self._host:
            # Stops a proof made for another relay host being passed off here.
            raise HandshakeError(
                HandshakeErrorCode.HOST_MISMATCH,
                f"relay proved host {host[:253]!r}, we dialled {self._host!r}",
            )
        kid = _match(_KEY_ID_RE, _str(data, "key_id"), "key id")
        relay_key = self._pinned.get(kid)
        if relay_key is None:
            # Stops a forged relay and any relay key retired from the pin set.
            raise HandshakeError(
                HandshakeErrorCode.RELAY_KEY_NOT_PINNED, f"relay key {kid} is not pinned"
            )
        nonce = _bytes(data, "nonce", NONCE_SIZE)
        signature = _bytes(data, "signature", SIGNATURE_SIZE)
        transcript = relay_transcript(self._challenge, self._host, nonce, self._cert_sha256)
        try:
            relay_key.verify(signature, transcript)
        except InvalidSignature:
            # Forged or replayed proof, or a TLS interceptor: the relay signed
            # a different certificate hash from the one we observed.
            raise HandshakeError(
                HandshakeErrorCode.BAD_RELAY_SIGNATURE,
                f"relay proof does not verify with pinned key {kid} "
                "(forged, replayed, or TLS intercepted)",
            ) from None
        self.version = version
        addon_public = self._private_key.public_key()
        proof = self._private_key.sign(
            addon_transcript(nonce, self._challenge, self._host, self._cert_sha256, addon_public)
        )
        return _encode(
            {
                "type": "client_proof",
                "public_key": public_key_text(addon_public),
                "signature": b64url_encode(proof),
                "agent": self._agent,
            }
        )

    def receive_result(self, text: str) -> Welcome | Unlinked | RelayRefused:
        """Parse the relay's verdict: linked, awaiting a link, or refused."""
        self._enter(_State.WAIT_RESULT, "receive_result()")
        try:
            result = _parse_result(text)
        except BaseException:
            self._state = _State.FAILED
            raise
        self._state = _State.DONE
        if isinstance(result, Welcome) and self.version is not None:
            result = replace(result, version=self.version)
        return result


class RelayHandshake(_Machine):
    """The relay's side: prove ourselves, then verify the add-on's key.

    ``host`` is this relay's public host name, ``server_key`` its Ed25519
    key (the one add-ons pin), ``cert_sha256`` the SHA-256 of the leaf
    certificate this listener serves
    (:func:`homeport.tls.context.local_certificate_sha256`).
    """

    def __init__(self, host: str, server_key: Ed25519PrivateKey, cert_sha256: bytes) -> None:
        super().__init__()
        self._host = normalise_host(host)
        self._server_key = server_key
        self._key_id = key_id(server_key.public_key())
        self._cert_sha256 = _check_cert_hash(cert_sha256)
        self._challenge = b""
        self._nonce = b""
        self.version: int | None = None
        self.agent: str | None = None
        self.addon_key: Ed25519PublicKey | None = None

    def receive_hello(self, text: str) -> str:
        """Check the add-on's hello; return our ``server_proof`` message."""
        self._enter(_State.START, "receive_hello()")
        try:
            reply = self._answer_hello(text)
        except BaseException:
            self._state = _State.FAILED
            raise
        self._state = _State.WAIT_CLIENT_PROOF
        return reply

    def _answer_hello(self, text: str) -> str:
        data = _parse(text, frozenset({"hello"}))
        if _str(data, "protocol") != PROTOCOL_NAME:
            raise HandshakeError(HandshakeErrorCode.UNSUPPORTED_PROTOCOL, "not a Homeport tunnel")
        versions = data["versions"]
        if (
            not isinstance(versions, list)
            or not 1 <= len(versions) <= MAX_OFFERED_VERSIONS
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in versions)
        ):
            raise _malformed(f"'versions' must be a list of 1-{MAX_OFFERED_VERSIONS} integers")
        common = set(SUPPORTED_VERSIONS).intersection(v for v in versions if isinstance(v, int))
        if not common:
            raise HandshakeError(
                HandshakeErrorCode.UNSUPPORTED_VERSION,
                f"no common protocol version (we support {list(SUPPORTED_VERSIONS)})",
            )
        self.version = max(common)
        self._challenge = _bytes(data, "challenge", CHALLENGE_SIZE)
        # Fresh per connection: the add-on's proof can never be replayed.
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        signature = self._server_key.sign(
            relay_transcript(self._challenge, self._host, self._nonce, self._cert_sha256)
        )
        return _encode(
            {
                "type": "server_proof",
                "version": self.version,
                "host": self._host,
                "key_id": self._key_id,
                "nonce": b64url_encode(self._nonce),
                "signature": b64url_encode(signature),
            }
        )

    def receive_client_proof(self, text: str) -> Ed25519PublicKey:
        """Verify the add-on's signature; return its (now proven) public key.

        Proves possession of the private key for *this* connection (our
        fresh nonce, this host, this certificate). Whether the key is linked
        to an account is the caller's decision: answer with
        :meth:`welcome`, :meth:`unlinked` or :meth:`error`.
        """
        self._enter(_State.WAIT_CLIENT_PROOF, "receive_client_proof()")
        try:
            addon_key = self._verify_client_proof(text)
        except BaseException:
            self._state = _State.FAILED
            raise
        self._state = _State.AUTHENTICATED
        return addon_key

    def _verify_client_proof(self, text: str) -> Ed25519PublicKey:
        data = _parse(text, frozenset({"client_proof"}))
        try:
            addon_key = parse_public_key(_str(data, "public_key"))
        except ValueError:
            raise _malformed("'public_key' must be an ed25519: public key") from None
        signature = _bytes(data, "signature", SIGNATURE_SIZE)
        agent = _match(_AGENT_RE, _str(data, "agent"), "agent")
        transcript = addon_transcript(
            self._nonce, self._challenge, self._host, self._cert_sha256, addon_key
        )
        try:
            addon_key.verify(signature, transcript)
        except InvalidSignature:
            raise HandshakeError(
                HandshakeErrorCode.BAD_ADDON_SIGNATURE,
                f"add-on proof does not verify for key {key_id(addon_key)}",
            ) from None
        self.agent = agent
        self.addon_key = addon_key
        return addon_key

    def welcome(
        self, instance_id: str, url: str, settings: dict[str, JSONValue] | None = None
    ) -> str:
        """The add-on is linked to ``instance_id``; tunnel frames follow."""
        self._enter(_State.AUTHENTICATED, "welcome()")
        message: dict[str, JSONValue] = {
            "type": "welcome",
            "instance_id": instance_id,
            "url": url,
            "settings": settings if settings is not None else {},
        }
        return self._finish(message)

    def unlinked(self, link_code: str, expires_in: int) -> str:
        """The key is unknown: hand the add-on a short-lived, single-use link code."""
        self._enter(_State.AUTHENTICATED, "unlinked()")
        return self._finish({"type": "unlinked", "link_code": link_code, "expires_in": expires_in})

    def error(self, code: str, message: str) -> str:
        """Refuse the add-on; allowed at any point before a result was sent.

        Also the polite answer after a :class:`HandshakeError` on this side
        (pass ``exc.code`` and ``exc.message``, which hold no secrets).
        """
        if self._state is _State.DONE:
            raise HandshakeError(HandshakeErrorCode.OUT_OF_ORDER, "error() after a result")
        return self._finish({"type": "error", "code": code, "message": message})

    def _finish(self, message: dict[str, JSONValue]) -> str:
        try:
            text = _encode(message)
            _parse_result(text)  # never send what the add-on would reject
        except HandshakeError as exc:
            self._state = _State.FAILED
            raise ValueError(f"invalid {message['type']} message: {exc.message}") from None
        self._state = _State.DONE
        return text
