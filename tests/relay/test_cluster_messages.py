"""Revocation messages between relay nodes: sealed, fresh, ids only, strictly parsed (unit)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from homeport.relay.cluster.messages import (
    MAX_AGE,
    WITHDRAWAL,
    Envelope,
    LinkedNotice,
    RefusedMessage,
    Sealer,
    key_fingerprint,
)
from homeport.relay.cluster.sealed import ReplayGuard, Seal
from homeport.relay.live import Ending, Withdrawal

KEY = b"k" * 32
CHANNEL = "homeport:withdrawals"
HOME = "abcdefghijklmnopqrstuvwxyz"
NOW = 1_800_000_000.0

EVERY_KIND = [
    Withdrawal.sessions([3, 1, 2]),
    Withdrawal.user(7),
    Withdrawal.user(7, instance_id=HOME, except_session_id=9, why=Ending.ACCESS_WITHDRAWN),
    Withdrawal.app_link(11),
    Withdrawal.instance(HOME),
    Withdrawal.integrations_off(HOME, ["webhook", "alexa_smart_home"]),
]


PREFIX = WITHDRAWAL.prefix


def _reseal(sealer: Sealer, body: dict[str, object]) -> bytes:
    """A message with the right HMAC over an arbitrary body (what a key holder could send)."""
    payload = json.dumps(body, separators=(",", ":")).encode()
    return Seal(KEY).wrap(WITHDRAWAL, CHANNEL, payload)


def _body(data: bytes) -> dict[str, object]:
    body: dict[str, object] = json.loads(data.split(b":", 2)[2])
    return body


@pytest.mark.parametrize("withdrawal", EVERY_KIND, ids=lambda w: w.kind.value)
def test_every_kind_round_trips(withdrawal: Withdrawal) -> None:
    sealer = Sealer(KEY, CHANNEL)
    data = sealer.seal(withdrawal, node="node-a", now=NOW)
    envelope = sealer.open(data)
    assert envelope.news == withdrawal
    assert (envelope.node, envelope.sent_at) == ("node-a", NOW)
    assert len(envelope.nonce) == 32


def test_the_payload_carries_ids_only() -> None:
    data = Sealer(KEY, CHANNEL).seal(Withdrawal.user(7, instance_id=HOME), node="n", now=NOW)
    assert set(_body(data)) == {
        "node",
        "at",
        "id",
        "kind",
        "user",
        "instance",
        "except_session",
        "why",
    }
    assert KEY not in data


def test_a_message_sealed_with_another_key_is_refused() -> None:
    forged = Sealer(b"x" * 32, CHANNEL).seal(Withdrawal.user(7), node="n", now=NOW)
    with pytest.raises(RefusedMessage, match="bad signature"):
        Sealer(KEY, CHANNEL).open(forged)


def test_a_message_for_another_channel_is_refused() -> None:
    """The channel name is under the HMAC: a message cannot be moved to another channel."""
    other = Sealer(KEY, "other:channel").seal(Withdrawal.user(7), node="n", now=NOW)
    with pytest.raises(RefusedMessage, match="bad signature"):
        Sealer(KEY, CHANNEL).open(other)


def test_any_changed_byte_is_refused() -> None:
    sealer = Sealer(KEY, CHANNEL)
    data = sealer.seal(Withdrawal.sessions([5]), node="n", now=NOW)
    tampered = data.replace(b'"sessions":[5]', b'"sessions":[6]')
    assert tampered != data
    with pytest.raises(RefusedMessage, match="bad signature"):
        sealer.open(tampered)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "unknown format"),
        (b"hp0:" + b"0" * 64 + b":{}", "unknown format"),
        (PREFIX + b"00:{}", "unknown format"),
        (PREFIX + b"0" * 64, "unknown format"),
        (PREFIX + b"0" * 64 + b":" + b" " * (64 * 1024), "too large"),
    ],
)
def test_malformed_frames_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(RefusedMessage, match=reason):
        Sealer(KEY, CHANNEL).open(data)


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GOOD = {"node": "n", "at": NOW, "id": "0" * 32, "kind": "sessions", "sessions": [1]}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"kind": "everything"}, "unknown kind"),
        ({"sessions": []}, "bad sessions"),
        ({"sessions": [0]}, "bad sessions"),
        ({"sessions": [True]}, "bad sessions"),
        ({"sessions": ["1"]}, "bad sessions"),
        ({"sessions": [2**63]}, "bad sessions"),
        ({"sessions": list(range(1, 5000))}, "bad sessions"),
        ({"node": ""}, "bad node"),
        ({"node": "a b"}, "bad node"),
        ({"at": "now"}, "bad time"),
        ({"at": True}, "bad time"),
        ({"id": "short"}, "bad id"),
        ({"extra": 1}, "unexpected fields"),
        ({"kind": "instance", "instance": HOME}, "unexpected fields"),  # and "sessions"
        ({"kind": "instance", "instance": "../../etc"}, "unexpected fields"),
    ],
)
def test_well_signed_but_malformed_bodies_are_refused(
    change: dict[str, object], reason: str
) -> None:
    sealer = Sealer(KEY, CHANNEL)
    body = {**GOOD, **change}
    with pytest.raises(RefusedMessage, match=reason):
        sealer.open(_reseal(sealer, body))


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"kind": "instance", "instance": "NOT-AN-INSTANCE-ID-AT-ALL!"}, "bad instance"),
        (
            {
                "kind": "user",
                "user": 1,
                "instance": None,
                "except_session": 0,
                "why": "SESSION_ENDED",
            },
            "bad except_session",
        ),
        (
            {"kind": "user", "user": 1, "instance": None, "except_session": None, "why": "NUKE"},
            "bad why",
        ),
        ({"kind": "integrations", "instance": HOME, "integrations": ["Web Hook"]}, "bad integr"),
        ({"kind": "app_link", "app_link": -1}, "bad app_link"),
    ],
)
def test_field_shapes_are_checked(body: dict[str, object], reason: str) -> None:
    sealer = Sealer(KEY, CHANNEL)
    with pytest.raises(RefusedMessage, match=reason):
        sealer.open(_reseal(sealer, {"node": "n", "at": NOW, "id": "1" * 32, **body}))


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Sealer(b"x" * 31, CHANNEL)


def _envelope(at: float, nonce: str = "a" * 32) -> Envelope:
    return Envelope("n", at, nonce, Withdrawal.app_link(1))


def test_replays_and_stale_or_future_messages_are_refused() -> None:
    guard = ReplayGuard(max_age=MAX_AGE)
    guard.check(_envelope(NOW), NOW + 1)
    with pytest.raises(RefusedMessage, match="replayed"):
        guard.check(_envelope(NOW), NOW + 2)
    with pytest.raises(RefusedMessage, match="too old"):
        guard.check(_envelope(NOW - MAX_AGE - 1, "b" * 32), NOW)
    with pytest.raises(RefusedMessage, match="from the future"):
        guard.check(_envelope(NOW + MAX_AGE + 1, "c" * 32), NOW)
    guard.check(_envelope(NOW - MAX_AGE + 1, "d" * 32), NOW)


def test_the_replay_memory_is_bounded() -> None:
    guard = ReplayGuard(max_age=MAX_AGE, capacity=3)
    for i in range(10):
        guard.check(_envelope(NOW, f"{i:032x}"), NOW)
    assert len(guard._seen) <= 3
    # Ids are forgotten only once their message would be refused as too old anyway.
    guard = ReplayGuard(max_age=MAX_AGE)
    guard.check(_envelope(NOW), NOW)
    guard.check(_envelope(NOW + 3 * MAX_AGE, "e" * 32), NOW + 3 * MAX_AGE)
    assert "a" * 32 not in guard._seen


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_crash_the_reader(data: bytes) -> None:
    sealer = Sealer(KEY, CHANNEL)
    with pytest.raises(RefusedMessage):
        sealer.open(data)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["node", "at", "id", "kind", "sessions", "user", "instance", "why"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30)),
    )
)
def test_arbitrary_signed_bodies_are_parsed_or_refused_cleanly(body: dict[str, object]) -> None:
    """Even a key holder cannot crash a node: any body is a withdrawal or a RefusedMessage."""
    sealer = Sealer(KEY, CHANNEL)
    try:
        envelope = sealer.open(_reseal(sealer, body))
    except RefusedMessage:
        return
    assert isinstance(envelope.news, Withdrawal)


ADDON_KEY = "ed25519:" + "A" * 43


def test_a_linked_notice_round_trips_and_names_the_key_by_fingerprint_only() -> None:
    sealer = Sealer(KEY, CHANNEL)
    notice = LinkedNotice.of_key(ADDON_KEY)
    data = sealer.seal(notice, node="node-a", now=NOW)
    assert sealer.open(data).news == notice
    assert set(_body(data)) == {"node", "at", "id", "kind", "key"}
    assert ADDON_KEY.encode() not in data
    assert notice.key_fingerprint == key_fingerprint(ADDON_KEY)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"key": "A" * 64}, "bad key"),
        ({"key": "ab"}, "bad key"),
        ({"key": 7}, "bad key"),
        ({"code": "K7QX-2MPL"}, "unexpected fields"),
    ],
)
def test_malformed_linked_notices_are_refused(change: dict[str, object], reason: str) -> None:
    sealer = Sealer(KEY, CHANNEL)
    body = _body(sealer.seal(LinkedNotice.of_key(ADDON_KEY), node="n", now=NOW)) | change
    with pytest.raises(RefusedMessage) as refused:
        sealer.open(_reseal(sealer, body))
    assert refused.value.reason == reason
