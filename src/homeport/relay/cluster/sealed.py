"""The sealed envelope: the one wire form of everything relay nodes tell each other over Redis.

Four kinds travel in it (a :class:`SealedKind` each): withdrawals and linked
notices (:mod:`~homeport.relay.cluster.messages`), certificate notices
(:mod:`~homeport.relay.cluster.certificates`), presence records and move
requests (:mod:`~homeport.relay.cluster.presence`). On the wire::

    <prefix><hex HMAC-SHA256>:<JSON payload>
    HMAC key:     the cluster key (a file every node has; never stored in Redis)
    HMAC message: <kind's domain string> <context> "\\n" <payload bytes>

The *context* is where the envelope is meant to be read: the Pub/Sub channel
name, or the Redis key a presence record is stored under. The payload is a
JSON object with exactly the kind's fields plus ``node`` (the sender) and
``at`` (when it was sealed), and ``id`` (a random nonce) for kinds that refuse
replays. Each kind then checks its own fields.

Threats this stops (anyone who can reach Redis but has no cluster key: a
neighbour on its network, a compromised service sharing it, or a node of
another cluster):

* **Forgery.** Without the key nobody can make a withdrawal (cutting people
  off at will), a presence claim (pulling a home's routing to a node of their
  choice), a move request (bouncing a tunnel between nodes) or a certificate
  notice (making every node hit the database): the HMAC is checked, in
  constant time, before a byte of the payload is parsed.
* **Tampering.** Any changed byte of the payload breaks the HMAC.
* **Confusion between kinds and places.** Each kind's domain string is under
  the HMAC, and so is the context: an envelope sealed as one kind is refused
  as every other (even with its prefix rewritten), a presence record copied
  to another home's key is refused, a message published on another channel
  is refused.
* **Replay.** Kinds with a freshness bound (``max_age``) refuse an envelope
  sealed longer ago (or further ahead: clocks are kept by NTP); kinds that
  refuse replays carry a nonce that :class:`ReplayGuard` remembers for as
  long as the envelope would still be fresh.
* **Malformed input.** Oversized data, a wrong prefix, a malformed MAC, a
  payload that is not a JSON object, missing or extra fields, or a bad
  ``node``/``at``/``id`` are refused whole with a :class:`RefusedMessage`
  naming why (a reason, never the data), so a key holder cannot crash a node
  either.

This module does no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = [
    "KEY_MIN_BYTES",
    "Opened",
    "RefusedMessage",
    "ReplayGuard",
    "Seal",
    "SealedKind",
    "check_fresh",
]

#: Bytes of key material a cluster key must have at least (256 bits).
KEY_MIN_BYTES: Final = 32
_MAC_HEX: Final = 64
_NODE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NONCE: Final = re.compile(r"[0-9a-f]{32}")

#: The fields of a kind's payload besides the header: fixed, or found from the
#: payload itself (a kind with variants); the latter raises RefusedMessage if none fits.
Fields = frozenset[str] | Callable[[Mapping[str, Any]], frozenset[str]]


class RefusedMessage(ValueError):
    """Not a genuine, fresh, well-formed envelope of the kind expected; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SealedKind:
    """One kind of sealed envelope: its wire prefix, its domain under the HMAC, its fields."""

    prefix: bytes
    domain: bytes
    fields: Fields
    max_size: int
    #: Refused when sealed more than this many seconds ago or ahead (None: the kind's
    #: reader checks freshness itself, e.g. with a ReplayGuard).
    max_age: float | None = None
    #: Whether the payload carries a random ``id`` (for kinds that refuse replays).
    nonce: bool = False

    def expected(self, body: Mapping[str, Any]) -> frozenset[str]:
        own = self.fields if isinstance(self.fields, frozenset) else self.fields(body)
        return own | {"node", "at"} | ({"id"} if self.nonce else set())


@dataclass(frozen=True, slots=True)
class Opened:
    """A genuine envelope, its header checked; ``body`` is the whole payload."""

    node: str
    sent_at: float
    #: The random ``id`` ("" for a kind without one).
    nonce: str
    body: dict[str, Any]


class Seal:
    """Seals and opens envelopes of every kind with the cluster key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < KEY_MIN_BYTES:
            raise ValueError(f"the cluster key must have at least {KEY_MIN_BYTES} bytes")
        self._key = key

    def _mac(self, kind: SealedKind, context: str, payload: bytes) -> bytes:
        message = kind.domain + context.encode() + b"\n" + payload
        return hmac.new(self._key, message, hashlib.sha256).hexdigest().encode()

    def wrap(self, kind: SealedKind, context: str, payload: bytes) -> bytes:
        """The wire bytes around ``payload`` as given (the framing alone)."""
        return kind.prefix + self._mac(kind, context, payload) + b":" + payload

    def seal(
        self,
        kind: SealedKind,
        context: str,
        fields: Mapping[str, Any],
        *,
        node: str,
        now: float,
        nonce: str | None = None,
    ) -> bytes:
        """The wire bytes of ``fields`` with the header (``node``, ``at``, maybe ``id``)."""
        body = {"node": node, "at": round(now, 3), **fields}
        if kind.nonce:
            body["id"] = nonce or secrets.token_hex(16)
        payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return self.wrap(kind, context, payload)

    def open(
        self, kind: SealedKind, context: str, data: bytes, *, now: float | None = None
    ) -> Opened:
        """The envelope if genuine, well-formed (and fresh, when ``now`` is given and the
        kind has a ``max_age``); else :class:`RefusedMessage`."""
        if len(data) > kind.max_size:
            raise RefusedMessage("too large")
        if not data.startswith(kind.prefix):
            raise RefusedMessage("unknown format")
        mac, sep, payload = data[len(kind.prefix) :].partition(b":")
        if not sep or len(mac) != _MAC_HEX:
            raise RefusedMessage("unknown format")
        if not hmac.compare_digest(mac, self._mac(kind, context, payload)):
            raise RefusedMessage("bad signature")
        try:
            body = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RefusedMessage("not JSON") from None
        if not isinstance(body, dict):
            raise RefusedMessage("not an object")
        if set(body) != kind.expected(body):
            raise RefusedMessage("unexpected fields")
        node, at, nonce = body["node"], body["at"], body.get("id", "")
        if not isinstance(node, str) or not _NODE.fullmatch(node):
            raise RefusedMessage("bad node")
        if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
            raise RefusedMessage("bad time")
        if kind.nonce and (not isinstance(nonce, str) or not _NONCE.fullmatch(nonce)):
            raise RefusedMessage("bad id")
        if kind.max_age is not None and now is not None:
            check_fresh(at, now, kind.max_age)
        return Opened(node, float(at), nonce, body)


def check_fresh(sent_at: float, now: float, max_age: float) -> None:
    """Refuse what was sealed more than ``max_age`` seconds before (or after) ``now``."""
    if sent_at < now - max_age:
        raise RefusedMessage("too old")
    if sent_at > now + max_age:
        raise RefusedMessage("from the future")


class Stamped(Protocol):
    @property
    def sent_at(self) -> float: ...

    @property
    def nonce(self) -> str: ...


class ReplayGuard:
    """Refuses stale, future and repeated envelopes (for kinds that refuse replays).

    Ids are remembered for twice ``max_age`` seconds, at most ``capacity`` of
    them; past that the oldest are forgotten early, which only matters to a
    flood that the HMAC has already let through (a holder of the key).
    """

    def __init__(self, *, max_age: float, capacity: int = 100_000) -> None:
        self._max_age = max_age
        self._capacity = capacity
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, envelope: Stamped, now: float) -> None:
        """Accept ``envelope`` once (remembering its id), or raise :class:`RefusedMessage`."""
        check_fresh(envelope.sent_at, now, self._max_age)
        while self._seen and (
            len(self._seen) >= self._capacity
            or next(iter(self._seen.values())) < now - 2 * self._max_age
        ):
            self._seen.popitem(last=False)
        if envelope.nonce in self._seen:
            raise RefusedMessage("replayed")
        self._seen[envelope.nonce] = now
