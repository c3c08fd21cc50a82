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
  with work. Every message is a sealed envelope
  (:mod:`~homeport.relay.cluster.sealed`, kind :data:`WITHDRAWAL`): an
  HMAC-SHA256 over its kind, the channel name and the exact payload bytes,
  keyed by the cluster key; :meth:`Sealer.open` refuses anything else before
  reading a field.
* **Replayed revocations.** A message captured off the wire and published
  again later would cut access granted since. Each message has a random id
  and its sending time: a :class:`~homeport.relay.cluster.sealed.ReplayGuard`
  refuses one older than :data:`MAX_AGE` seconds (or from further in the
  future: clocks are kept by NTP) and one whose id it has already seen within
  that window.
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
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from homeport.relay.cluster.sealed import RefusedMessage, Seal, SealedKind
from homeport.relay.live import Ending, Kind, Withdrawal

__all__ = [
    "MAX_AGE",
    "MAX_MESSAGE",
    "WITHDRAWAL",
    "Envelope",
    "LinkedNotice",
    "RefusedMessage",
    "Sealer",
    "key_fingerprint",
]

#: A message older (or further in the future) than this many seconds is refused.
MAX_AGE: Final = 30.0
#: Largest message accepted (a few thousand session ids fit).
MAX_MESSAGE: Final = 64 * 1024
#: Most ids one message may name.
MAX_IDS: Final = 4096
_INSTANCE_ID: Final = re.compile(r"[a-z2-7]{26}")
_INTEGRATION: Final = re.compile(r"[a-z_]{1,32}")
_ROW_ID_MAX: Final = 2**63 - 1
_FINGERPRINT: Final = re.compile(r"[0-9a-f]{64}")
#: The ``kind`` of a linked notice on the wire (not a :class:`Kind`: nothing is withdrawn).
LINKED: Final = "linked"


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


def _payload_fields(body: Mapping[str, Any]) -> frozenset[str]:
    """The payload fields of the message's ``kind`` (a withdrawal kind, or linked)."""
    if body.get("kind") == LINKED:
        return frozenset({"kind", "key"})
    try:
        kind = Kind(str(body.get("kind")))
    except ValueError:
        raise RefusedMessage("unknown kind") from None
    return frozenset({"kind", *_fields(Withdrawal(kind))})


#: Withdrawals and linked notices; freshness and replays are the reader's
#: :class:`~homeport.relay.cluster.sealed.ReplayGuard`'s job.
WITHDRAWAL: Final = SealedKind(
    prefix=b"hp1:",
    domain=b"homeport cluster revocation v1\n",
    fields=_payload_fields,
    max_size=MAX_MESSAGE,
    nonce=True,
)


class Sealer:
    """Seals and opens messages with the cluster key, for one channel name."""

    def __init__(self, key: bytes, channel: str) -> None:
        self._seal = Seal(key)
        self._channel = channel

    def seal(
        self,
        news: Withdrawal | LinkedNotice,
        *,
        node: str,
        now: float,
        nonce: str | None = None,
    ) -> bytes:
        """The wire bytes (:mod:`~homeport.relay.cluster.sealed`)."""
        fields: dict[str, Any] = (
            {"kind": LINKED, "key": news.key_fingerprint}
            if isinstance(news, LinkedNotice)
            else {"kind": news.kind.value, **_fields(news)}
        )
        return self._seal.seal(WITHDRAWAL, self._channel, fields, node=node, now=now, nonce=nonce)

    def open(self, data: bytes) -> Envelope:
        """The envelope of a genuine, well-formed message; else :class:`RefusedMessage`.

        Freshness and replays are the reader's
        :class:`~homeport.relay.cluster.sealed.ReplayGuard`'s job.
        """
        opened = self._seal.open(WITHDRAWAL, self._channel, data)
        body = opened.body
        if body["kind"] == LINKED:
            key = body["key"]
            if not isinstance(key, str) or not _FINGERPRINT.fullmatch(key):
                raise RefusedMessage("bad key")
            news: Withdrawal | LinkedNotice = LinkedNotice(key)
        else:
            news = _withdrawal(Kind(body["kind"]), body)
        return Envelope(opened.node, opened.sent_at, opened.nonce, news)


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
