"""The one sealed envelope (relay/cluster/sealed.py) of every kind nodes send over Redis (unit).

The wire bytes are pinned: each was made once by the code before the envelope
was shared (main at 53515ee, a fixed key and fixed fields), so nodes of both
versions read each other's messages during a rolling restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from homeport.relay.cluster.certificates import CHANNEL as CERTIFICATES
from homeport.relay.cluster.certificates import NOTICE, NoticeSealer
from homeport.relay.cluster.messages import WITHDRAWAL, LinkedNotice, Sealer
from homeport.relay.cluster.presence import MOVE, MOVES, RECORD, RecordSealer, key_for
from homeport.relay.cluster.sealed import RefusedMessage, ReplayGuard, Seal, SealedKind
from homeport.relay.live import Ending, Withdrawal

KEY = b"pinned cluster key for the wire-format test, 48 bytes!"[:48]
OTHER_KEY = b"another cluster key, just as long as the pinned 1"
NOW = 1_800_000_000.125
HOME = "abcdefghijklmnopqrstuvwxyz"
NONCE = "0123456789abcdef0123456789abcdef"
WITHDRAWALS = "homeport:withdrawals"

PINNED_USER = (
    b"hp1:777dbc341a3b155624e83f1f09b7f85d5728f58b80cf3d4760ab131e96215a00:"
    b'{"at":1800000000.125,"except_session":9,"id":"0123456789abcdef0123456789abcdef",'
    b'"instance":"abcdefghijklmnopqrstuvwxyz","kind":"user","node":"node-a","user":7,'
    b'"why":"ACCESS_WITHDRAWN"}'
)
PINNED_SESSIONS = (
    b"hp1:92684876d746ddee0cafdb4073a359188ff613e1ef2f723e6084b7fd929341ae:"
    b'{"at":1800000000.125,"id":"0123456789abcdef0123456789abcdef","kind":"sessions",'
    b'"node":"node-a","sessions":[1,2,3]}'
)
PINNED_LINKED = (
    b"hp1:9da550c8e54b8d0daed4ca969f352312efaf0dbc5927d3be304a8d4f2c158b46:"
    b'{"at":1800000000.125,"id":"0123456789abcdef0123456789abcdef",'
    b'"key":"abababababababababababababababababababababababababababababababab",'
    b'"kind":"linked","node":"node-a"}'
)
PINNED_NOTICE = (
    b"hc1:d10fdae5da2c17228b1e9ed38f69fc4ff07b4143492bf5b5a3441883f485e1f1:"
    b'{"at":1800000000.125,"kind":"account","node":"node-a","version":3}'
)
PINNED_RECORD = (
    b"hp1p:85b6dea1944e1699f053630f899b164ce627d99c5f5aed2a7224abda3ec4b936:"
    b'{"at":1800000000.125,"instance":"abcdefghijklmnopqrstuvwxyz","node":"node-a"}'
)
PINNED_MOVE = (
    b"hp1p:d6e6492a2961ba34f50fec09b35f8f30a8f6701abb7077a993250319c17721a7:"
    b'{"at":1800000000.125,"id":"0123456789abcdef0123456789abcdef",'
    b'"instance":"abcdefghijklmnopqrstuvwxyz","node":"node-b"}'
)


# ---------------------------------------------------------------- the pinned wire format

USER = Withdrawal.user(7, instance_id=HOME, except_session_id=9, why=Ending.ACCESS_WITHDRAWN)


@pytest.mark.parametrize(
    ("news", "pinned"),
    [
        (USER, PINNED_USER),
        (Withdrawal.sessions([3, 1, 2]), PINNED_SESSIONS),
        (LinkedNotice("ab" * 32), PINNED_LINKED),
    ],
    ids=["user", "sessions", "linked"],
)
def test_withdrawals_keep_their_wire_bytes(news: Withdrawal | LinkedNotice, pinned: bytes) -> None:
    sealer = Sealer(KEY, WITHDRAWALS)
    assert sealer.seal(news, node="node-a", now=NOW, nonce=NONCE) == pinned
    envelope = sealer.open(pinned)
    assert (envelope.node, envelope.sent_at, envelope.nonce, envelope.news) == (
        "node-a",
        NOW,
        NONCE,
        news,
    )


def test_certificate_notices_keep_their_wire_bytes() -> None:
    sealer = NoticeSealer(KEY)
    assert sealer.seal("account", 3, node="node-a", now=NOW) == PINNED_NOTICE
    assert sealer.open(PINNED_NOTICE, NOW) == ("node-a", "account", 3)


def test_presence_records_and_moves_keep_their_wire_bytes() -> None:
    sealer = RecordSealer(KEY)
    assert sealer.seal(HOME, node="node-a", now=NOW) == PINNED_RECORD
    record = sealer.open(HOME, PINNED_RECORD, now=NOW)
    assert (record.instance_id, record.node, record.written_at) == (HOME, "node-a", NOW)
    assert sealer.seal_move(HOME, node="node-b", now=NOW, nonce=NONCE) == PINNED_MOVE
    move = sealer.open_move(PINNED_MOVE, now=NOW)
    assert (move.instance_id, move.node, move.sent_at, move.nonce) == (HOME, "node-b", NOW, NONCE)


# ------------------------------------------------------ every kind through the envelope


@dataclass(frozen=True)
class Case:
    """One kind: where it is read, and a genuine envelope of it."""

    kind: SealedKind
    context: str
    genuine: bytes


CASES = {
    "withdrawal": Case(WITHDRAWAL, WITHDRAWALS, PINNED_USER),
    "notice": Case(NOTICE, CERTIFICATES, PINNED_NOTICE),
    "record": Case(RECORD, key_for(HOME), PINNED_RECORD),
    "move": Case(MOVE, MOVES, PINNED_MOVE),
}


def _payload(data: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(data.split(b":", 2)[2])
    return body


def _reseal(case: Case, body: dict[str, Any] | bytes, key: bytes = KEY) -> bytes:
    """Well sealed (by a holder of ``key``) around any payload."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Seal(key).wrap(case.kind, case.context, payload)


def _open(case: Case, data: bytes, now: float = NOW) -> None:
    Seal(KEY).open(case.kind, case.context, data, now=now)


@pytest.mark.parametrize("name", CASES)
def test_every_kind_opens_its_genuine_envelope(name: str) -> None:
    case = CASES[name]
    opened = Seal(KEY).open(case.kind, case.context, case.genuine, now=NOW)
    assert (opened.node[:5], opened.sent_at) == ("node-", NOW)
    assert opened.body == _payload(case.genuine)
    assert opened.nonce == (NONCE if case.kind.nonce else "")


def _refusal(case: Case, data: bytes, now: float = NOW) -> str:
    with pytest.raises(RefusedMessage) as refused:
        _open(case, data, now)
    return refused.value.reason


@pytest.mark.parametrize("name", CASES)
def test_a_forged_mac_is_refused(name: str) -> None:
    """Anyone with Redis access but without the cluster key."""
    case = CASES[name]
    forged = _reseal(case, _payload(case.genuine), key=OTHER_KEY)
    assert _refusal(case, forged) == "bad signature"
    prefix, _, rest = case.genuine.partition(b":")
    zeros = prefix + b":" + b"0" * 64 + b":" + rest.partition(b":")[2]
    assert _refusal(case, zeros) == "bad signature"


@pytest.mark.parametrize("name", CASES)
def test_an_altered_payload_is_refused(name: str) -> None:
    case = CASES[name]
    altered = case.genuine.replace(b'"node-', b'"nodeX')
    assert altered != case.genuine
    assert _refusal(case, altered) == "bad signature"


@pytest.mark.parametrize("sealed_as", CASES)
@pytest.mark.parametrize("read_as", CASES)
def test_an_envelope_of_one_kind_is_refused_as_every_other(sealed_as: str, read_as: str) -> None:
    """Even read in the same place and with its prefix rewritten: the kind is under the MAC."""
    if sealed_as == read_as:
        return
    source, target = CASES[sealed_as], CASES[read_as]
    body = {**_payload(source.genuine), **_payload(target.genuine)}  # the reader's fields, too
    payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    for context in {source.context, target.context}:
        data = Seal(KEY).wrap(source.kind, context, payload)
        with pytest.raises(RefusedMessage):
            _open(target, data)
        disguised = target.kind.prefix + data[len(source.kind.prefix) :]
        with pytest.raises(RefusedMessage, match="bad signature"):
            _open(target, disguised)


@pytest.mark.parametrize("name", CASES)
def test_an_envelope_for_another_place_is_refused(name: str) -> None:
    case = CASES[name]
    with pytest.raises(RefusedMessage, match="bad signature"):
        Seal(KEY).open(case.kind, "homeport:elsewhere", case.genuine, now=NOW)


@pytest.mark.parametrize("name", ["notice", "record", "move"])
def test_stale_or_future_envelopes_are_refused(name: str) -> None:
    case = CASES[name]
    assert case.kind.max_age is not None
    assert _refusal(case, case.genuine, now=NOW + case.kind.max_age + 1) == "too old"
    assert _refusal(case, case.genuine, now=NOW - case.kind.max_age - 1) == "from the future"
    _open(case, case.genuine, now=NOW + case.kind.max_age - 1)


def test_kinds_that_refuse_replays_carry_an_id_the_guard_remembers() -> None:
    assert {n for n, c in CASES.items() if c.kind.nonce} == {"withdrawal", "move"}
    for case in (CASES["withdrawal"], CASES["move"]):
        guard = ReplayGuard(max_age=30)
        opened = Seal(KEY).open(case.kind, case.context, case.genuine, now=NOW)
        guard.check(opened, NOW)
        again = Seal(KEY).open(case.kind, case.context, case.genuine, now=NOW)
        with pytest.raises(RefusedMessage, match="replayed"):
            guard.check(again, NOW + 1)
        with pytest.raises(RefusedMessage, match="too old"):
            ReplayGuard(max_age=30).check(opened, NOW + 31)


@pytest.mark.parametrize("name", CASES)
def test_extra_or_missing_fields_are_refused(name: str) -> None:
    case = CASES[name]
    body = _payload(case.genuine)
    assert _refusal(case, _reseal(case, {**body, "extra": 1})) == "unexpected fields"
    for field in body:
        missing = {k: v for k, v in body.items() if k != field}
        assert _refusal(case, _reseal(case, missing)) in {"unexpected fields", "unknown kind"}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"node": "a b"}, "bad node"),
        ({"node": 7}, "bad node"),
        ({"at": "now"}, "bad time"),
        ({"at": True}, "bad time"),
        ({"at": float("nan")}, "bad time"),
        ({"at": float("inf")}, "bad time"),
    ],
)
def test_a_bad_header_is_refused(name: str, change: dict[str, Any], reason: str) -> None:
    case = CASES[name]
    assert _refusal(case, _reseal(case, {**_payload(case.genuine), **change})) == reason


@pytest.mark.parametrize("name", ["withdrawal", "move"])
def test_a_bad_id_is_refused(name: str) -> None:
    case = CASES[name]
    body = {**_payload(case.genuine), "id": "not hex"}
    assert _refusal(case, _reseal(case, body)) == "bad id"


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"not json", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[1, 2]", "not an object")],
)
def test_a_payload_that_is_not_a_json_object_is_refused(
    name: str, payload: bytes, reason: str
) -> None:
    case = CASES[name]
    assert _refusal(case, _reseal(case, payload)) == reason


@pytest.mark.parametrize("name", CASES)
def test_oversized_or_unframed_data_is_refused(name: str) -> None:
    case = CASES[name]
    padded = _reseal(case, b" " * case.kind.max_size + json.dumps(_payload(case.genuine)).encode())
    assert _refusal(case, padded) == "too large"
    assert _refusal(case, b"") == "unknown format"
    assert _refusal(case, case.kind.prefix + b"00:{}") == "unknown format"
    assert _refusal(case, case.kind.prefix + b"0" * 64) == "unknown format"


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Seal(b"x" * 31)
