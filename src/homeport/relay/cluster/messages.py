"""Revocation messages between relay nodes: what ended, sealed with the cluster key.

When access ends on one node (a session signed out, a member removed, an app
link revoked, a home unlinked, an owner's integrations switched off), every
other node must drop what it cached about it and cut what it has open
(:mod:`homeport.relay.live`). This module is the wire form of that news; it
does no I/O.

Threats this stops:

* **Forged revocations.** Anyone who can reach Redis (a neighbour on its
  network, a compromised service sharing it) could otherwise publish "end
  every session of account 7" and cut people off at will, or flood the nodes
  with work. Every message carries an HMAC-SHA256 over the channel name and
  the exact payload bytes, keyed by the cluster key (a file every node has;
  never stored in Redis): :meth:`Sealer.open` refuses anything else before
  reading a field.
* **Replayed revocations.** A message captured off the wire and published
  again later would cut access granted since. Each message has a random id
  and its sending time: :class:`ReplayGuard` refuses one older than
  :data:`MAX_AGE` seconds (or from further in the future: clocks are kept by
  NTP) and one whose id it has already seen within that window.
* **Leaks through the channel.** Messages carry ids only (numeric row ids, an
  instance id, path kinds), never a token, cookie, code or address, so Redis
  and its logs learn nothing a database id does not already say.
* **Secrets on the channel.** A "linked" notice (an add-on key was linked to a
  home, so the node where that add-on waits can tell it at once) names the
  key by its SHA-256 fingerprint only; no link code ever crosses the channel.
* **Malformed input.** Everything is checked strictly (types, ranges, shapes,
  sizes) and refused whole with a :class:`RefusedMessage` naming why.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Final

from homeport.relay.live import Ending, Kind, Withdrawal

__all__ = [
    "KEY_MIN_BYTES",
    "MAX_AGE",
    "MAX_MESSAGE",
    "Envelope",
    "LinkedNotice",
    "RefusedMessage",
    "ReplayGuard",
    "Sealer",
    "key_fingerprint",
]

#: Wire prefix: the format's version.
PREFIX: Final = b"hp1:"
#: Bytes of key material a cluster key must have at least (256 bits).
KEY_MIN_BYTES: Final = 32
#: A message older (or further in the future) than this many seconds is refused.
MAX_AGE: Final = 30.0
#: Largest message accepted (a few thousand session ids fit).
MAX_MESSAGE: Final = 64 * 1024
#: Most ids one message may name.
MAX_IDS: Final = 4096
_DOMAIN: Final = b"homeport cluster revocation v1\n"
_MAC_HEX: Final = 64
_INSTANCE_ID: Final = re.compile(r"[a-z2-7]{26}")
_NODE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NONCE: Final = re.compile(r"[0-9a-f]{32}")
_INTEGRATION: Final = re.compile(r"[a-z_]{1,32}")
_ROW_ID_MAX: Final = 2**63 - 1
_FINGERPRINT: Final = re.compile(r"[0-9a-f]{64}")
#: The ``kind`` of a linked notice on the wire (not a :class:`Kind`: nothing is withdrawn).
LINKED: Final = "linked"


class RefusedMessage(ValueError):
    """A message that is not a genuine, fresh, well-formed revocation; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LinkedNotice:
    """An add-on key was just linked to a home: its connections waiting on any node
    may be told to reconnect now (the hub's 2 s database poll stays the fail-safe)."""

    key_fingerprint: str

    @classmethod
    def of_key(cls, addon_public_key: str) -> LinkedNotice:
        return cls(key_fingerprint(addon_public_key))


def key_fingerprint(addon_public_key: str) -> str:
    """The SHA-256 (hex) of an add-on's public key text: how the channel names it."""
    return hashlib.sha256(addon_public_key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Envelope:
    """A genuine message as opened: who sent it, when, its id, and its news."""

    node: str
    sent_at: float
    nonce: str
    news: Withdrawal | LinkedNotice


class Sealer:
    """Seals and opens messages with the cluster key, for one channel name."""

    def __init__(self, key: bytes, channel: str) -> None:
        if len(key) < KEY_MIN_BYTES:
            raise ValueError(f"the cluster key must have at least {KEY_MIN_BYTES} bytes")
        self._key = key
        self._channel = channel.encode()

    def _mac(self, payload: bytes) -> str:
        message = _DOMAIN + self._channel + b"\n" + payload
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def seal(
        self,
        news: Withdrawal | LinkedNotice,
        *,
        node: str,
        now: float,
        nonce: str | None = None,
    ) -> bytes:
        """The wire bytes: ``hp1:<hex HMAC>:<JSON payload>``."""
        fields: dict[str, Any] = (
            {"kind": LINKED, "key": news.key_fingerprint}
            if isinstance(news, LinkedNotice)
            else {"kind": news.kind.value, **_fields(news)}
        )
        body = {"node": node, "at": round(now, 3), "id": nonce or secrets.token_hex(16), **fields}
        payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return PREFIX + self._mac(payload).encode() + b":" + payload

    def open(self, data: bytes) -> Envelope:
        """The envelope of a genuine, well-formed message; else :class:`RefusedMessage`.

        The HMAC is checked (in constant time) before any field is parsed.
        Freshness is :class:`ReplayGuard`'s job.
        """
        if len(data) > MAX_MESSAGE:
            raise RefusedMessage("too large")
        if not data.startswith(PREFIX):
            raise RefusedMessage("unknown format")
        rest = data[len(PREFIX) :]
        mac, sep, payload = rest.partition(b":")
        if not sep or len(mac) != _MAC_HEX:
            raise RefusedMessage("unknown format")
        if not hmac.compare_digest(mac, self._mac(payload).encode()):
            raise RefusedMessage("bad signature")
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RefusedMessage("not JSON") from None
        if not isinstance(body, dict):
            raise RefusedMessage("not an object")
        return _envelope(body)


def _envelope(body: dict[str, Any]) -> Envelope:
    node, sent_at, nonce = body.get("node"), body.get("at"), body.get("id")
    if not isinstance(node, str) or not _NODE.fullmatch(node):
        raise RefusedMessage("bad node")
    if not isinstance(sent_at, int | float) or isinstance(sent_at, bool) or sent_at != sent_at:
        raise RefusedMessage("bad time")
    if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise RefusedMessage("bad id")
    if body.get("kind") == LINKED:
        if set(body) != {"node", "at", "id", "kind", "key"}:
            raise RefusedMessage("unexpected fields")
        key = body["key"]
        if not isinstance(key, str) or not _FINGERPRINT.fullmatch(key):
            raise RefusedMessage("bad key")
        return Envelope(node, float(sent_at), nonce, LinkedNotice(key))
    try:
        kind = Kind(str(body.get("kind")))
    except ValueError:
        raise RefusedMessage("unknown kind") from None
    expected = {"node", "at", "id", "kind", *_fields(Withdrawal(kind))}
    if set(body) != expected:
        raise RefusedMessage("unexpected fields")
    return Envelope(node, float(sent_at), nonce, _withdrawal(kind, body))


def _withdrawal(kind: Kind, body: dict[str, Any]) -> Withdrawal:
    match kind:
        case Kind.SESSIONS:
            ids = body["sessions"]
            if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS:
                raise RefusedMessage("bad sessions")
            return Withdrawal.sessions(tuple(_row_id(i, "sessions") for i in ids))
        case Kind.USER:
            instance = body["instance"]
            except_session = body["except_session"]
            try:
                why = Ending[body["why"]]
            except (KeyError, TypeError):
                raise RefusedMessage("bad why") from None
            return Withdrawal.user(
                _row_id(body["user"], "user"),
                instance_id=None if instance is None else _instance(instance),
                except_session_id=(
                    None if except_session is None else _row_id(except_session, "except_session")
                ),
                why=why,
            )
        case Kind.APP_LINK:
            return Withdrawal.app_link(_row_id(body["app_link"], "app_link"))
        case Kind.INSTANCE:
            return Withdrawal.instance(_instance(body["instance"]))
        case Kind.INTEGRATIONS:
            kinds = body["integrations"]
            if (
                not isinstance(kinds, list)
                or not kinds
                or len(kinds) > 16
                or not all(isinstance(k, str) and _INTEGRATION.fullmatch(k) for k in kinds)
            ):
                raise RefusedMessage("bad integrations")
            return Withdrawal.integrations_off(_instance(body["instance"]), tuple(kinds))


def _fields(withdrawal: Withdrawal) -> dict[str, Any]:
    """The payload fields of a withdrawal's kind (and only those)."""
    match withdrawal.kind:
        case Kind.SESSIONS:
            return {"sessions": list(withdrawal.session_ids)}
        case Kind.USER:
            return {
                "user": withdrawal.user_id,
                "instance": withdrawal.instance_id,
                "except_session": withdrawal.except_session_id,
                "why": withdrawal.why.name,
            }
        case Kind.APP_LINK:
            return {"app_link": withdrawal.app_link_id}
        case Kind.INSTANCE:
            return {"instance": withdrawal.instance_id}
        case Kind.INTEGRATIONS:
            return {
                "instance": withdrawal.instance_id,
                "integrations": list(withdrawal.integrations),
            }


def _row_id(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= _ROW_ID_MAX:
        raise RefusedMessage(f"bad {name}")
    return value


def _instance(value: object) -> str:
    if not isinstance(value, str) or not _INSTANCE_ID.fullmatch(value):
        raise RefusedMessage("bad instance")
    return value


class ReplayGuard:
    """Refuses stale, future and repeated messages (see the module docstring).

    Ids are remembered for :data:`MAX_AGE` seconds, at most ``capacity`` of
    them; past that the oldest are forgotten early, which only matters to a
    flood that the HMAC has already let through (a holder of the key).
    """

    def __init__(self, *, max_age: float = MAX_AGE, capacity: int = 100_000) -> None:
        self._max_age = max_age
        self._capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, envelope: Envelope, now: float) -> None:
        """Accept ``envelope`` once (remembering its id), or raise :class:`RefusedMessage`."""
        if envelope.sent_at < now - self._max_age:
            raise RefusedMessage("too old")
        if envelope.sent_at > now + self._max_age:
            raise RefusedMessage("from the future")
        while self._seen and (
            len(self._seen) >= self._capacity
            or next(iter(self._seen.values())) < now - 2 * self._max_age
        ):
            self._seen.popitem(last=False)
        if envelope.nonce in self._seen:
            raise RefusedMessage("replayed")
        self._seen[envelope.nonce] = now
