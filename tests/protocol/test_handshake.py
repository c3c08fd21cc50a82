"""The tunnel handshake: both state machines, every check, and a real TLS MITM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from homeport.keys import (
    b64url_decode,
    b64url_encode,
    key_id,
    parse_pinned_keys,
    public_key_raw,
    public_key_text,
)
from homeport.protocol.handshake import (
    DEFAULT_AGENT,
    MAX_MESSAGE_SIZE,
    SUPPORTED_VERSIONS,
    AddonHandshake,
    HandshakeError,
    HandshakeErrorCode,
    RelayHandshake,
    RelayRefused,
    Unlinked,
    Welcome,
    addon_transcript,
    normalise_host,
    relay_transcript,
)
from homeport.tls.context import (
    client_context,
    local_certificate_sha256,
    peer_certificate_sha256,
    server_context,
)
from homeport.tls.devca import create_independent_ca, ensure_dev_ca

HOST = "relay.home.localhost"
Code = HandshakeErrorCode
Message = dict[str, object]


class Parties:
    """A relay and an add-on with fresh keys, both seeing the same certificate."""

    def __init__(self) -> None:
        self.relay_key = Ed25519PrivateKey.generate()
        self.addon_key = Ed25519PrivateKey.generate()
        self.cert_sha256 = os.urandom(32)

    def addon(
        self,
        *,
        pinned: list[Ed25519PublicKey] | None = None,
        cert: bytes | None = None,
        versions: tuple[int, ...] = SUPPORTED_VERSIONS,
    ) -> AddonHandshake:
        return AddonHandshake(
            HOST,
            pinned if pinned is not None else [self.relay_key.public_key()],
            self.addon_key,
            cert if cert is not None else self.cert_sha256,
            versions=versions,
        )

    def relay(
        self,
        *,
        key: Ed25519PrivateKey | None = None,
        host: str = HOST,
        cert: bytes | None = None,
    ) -> RelayHandshake:
        return RelayHandshake(
            host, key or self.relay_key, cert if cert is not None else self.cert_sha256
        )


@pytest.fixture
def p() -> Parties:
    return Parties()


def _load(text: str) -> Message:
    data = json.loads(text)
    assert isinstance(data, dict)
    return data


def _dump(data: Mapping[str, object]) -> str:
    return json.dumps(data, separators=(",", ":"))


def _edit(text: str, **changes: object) -> str:
    return _dump({**_load(text), **changes})


def _flip(b64: object, length: int) -> str:
    assert isinstance(b64, str)
    raw = bytearray(b64url_decode(b64, length=length))
    raw[0] ^= 1
    return b64url_encode(bytes(raw))


def _code(exc: pytest.ExceptionInfo[HandshakeError]) -> HandshakeErrorCode:
    return exc.value.code


# -- the happy path ---------------------------------------------------------------


def test_full_handshake_welcome(p: Parties) -> None:
    addon, relay = p.addon(), p.relay()
    hello = addon.hello()
    assert set(_load(hello)) == {"type", "protocol", "versions", "challenge"}
    proof = relay.receive_hello(hello)
    client_proof = addon.receive_server_proof(proof)
    addon_public = relay.receive_client_proof(client_proof)
    assert public_key_raw(addon_public) == public_key_raw(p.addon_key.public_key())
    assert relay.agent == DEFAULT_AGENT == "homeport-addon/0.1.0"
    assert relay.version == addon.version == 2  # the newest both speak
    result = addon.receive_result(
        relay.welcome("abc123", "https://abc123.tenant.example/", {"keepalive": 20})
    )
    assert result == Welcome(
        "abc123", "https://abc123.tenant.example/", {"keepalive": 20}, version=2
    )
    assert addon.done
    assert relay.done


def test_wire_format(p: Parties) -> None:
    addon, relay = p.addon(), p.relay()
    hello = _load(addon.hello())
    assert hello["protocol"] == "homeport-tunnel"
    assert hello["versions"] == [1, 2]
    challenge = b64url_decode(str(hello["challenge"]), length=32)
    proof = _load(relay.receive_hello(_dump(hello)))
    assert proof["key_id"] == key_id(p.relay_key.public_key())
    assert proof["host"] == HOST
    nonce = b64url_decode(str(proof["nonce"]), length=32)
    # The signature is exactly over the documented transcript.
    p.relay_key.public_key().verify(
        b64url_decode(str(proof["signature"]), length=64),
        b"homeport-relay-proof-v1\x00"
        + b"\x00\x20" + challenge
        + b"\x00\x14" + HOST.encode()
        + b"\x00\x20" + nonce
        + b"\x00\x20" + p.cert_sha256,
    )  # fmt: skip
    client = _load(addon.receive_server_proof(_dump(proof)))
    assert client["public_key"] == public_key_text(p.addon_key.public_key())
    p.addon_key.public_key().verify(
        b64url_decode(str(client["signature"]), length=64),
        addon_transcript(nonce, challenge, HOST, p.cert_sha256, p.addon_key.public_key()),
    )
    assert relay_transcript(challenge, HOST, nonce, p.cert_sha256).startswith(
        b"homeport-relay-proof-v1\x00"
    )


def test_unlinked_and_refused_results(p: Parties) -> None:
    cases: list[tuple[Callable[[RelayHandshake], str], object]] = [
        (lambda r: r.unlinked("K7QX-2MPL", 600), Unlinked("K7QX-2MPL", 600)),
        (lambda r: r.error("revoked", "removed"), RelayRefused("revoked", "removed")),
    ]
    for build, expected in cases:
        addon, relay = p.addon(), p.relay()
        relay.receive_client_proof(addon.receive_server_proof(relay.receive_hello(addon.hello())))
        assert addon.receive_result(build(relay)) == expected


def test_host_is_normalised() -> None:
    assert normalise_host("Relay.Home.Localhost.") == HOST
    assert normalise_host("[::1]") == "::1"
    assert normalise_host("bücher.example") == "xn--bcher-kva.example"
    for bad in ["", "a..b", "under_score.example", "x" * 64 + ".example", "a b"]:
        with pytest.raises(ValueError, match="host"):
            normalise_host(bad)


def test_case_of_dialled_host_does_not_matter(p: Parties) -> None:
    addon = AddonHandshake(
        "RELAY.home.localhost", [p.relay_key.public_key()], p.addon_key, p.cert_sha256
    )
    relay = p.relay()
    relay.receive_client_proof(addon.receive_server_proof(relay.receive_hello(addon.hello())))


# -- the relay's proof, checked by the add-on --------------------------------------------


def test_unpinned_relay_key_refused(p: Parties) -> None:
    addon, impostor = p.addon(), p.relay(key=Ed25519PrivateKey.generate())
    with pytest.raises(HandshakeError) as exc:
        addon.receive_server_proof(impostor.receive_hello(addon.hello()))
    assert _code(exc) is Code.RELAY_KEY_NOT_PINNED


def test_impostor_claiming_a_pinned_key_id_refused(p: Parties) -> None:
    addon, impostor = p.addon(), p.relay(key=Ed25519PrivateKey.generate())
    proof = impostor.receive_hello(addon.hello())
    forged = _edit(proof, key_id=key_id(p.relay_key.public_key()))
    with pytest.raises(HandshakeError) as exc:
        addon.receive_server_proof(forged)
    assert _code(exc) is Code.BAD_RELAY_SIGNATURE


def test_key_rotation(p: Parties) -> None:
    old, new = p.relay_key, Ed25519PrivateKey.generate()
    both = parse_pinned_keys(
        f"{public_key_text(old.public_key())}, {public_key_text(new.public_key())}"
    )
    # While both are pinned, the relay may sign with either.
    for key in (old, new):
        addon, relay = p.addon(pinned=both), p.relay(key=key)
        relay.receive_client_proof(addon.receive_server_proof(relay.receive_hello(addon.hello())))
    # An add-on update drops the old key: the next key works, the old one is refused.
    only_new = parse_pinned_keys(public_key_text(new.public_key()))
    addon, relay = p.addon(pinned=only_new), p.relay(key=new)
    addon.receive_server_proof(relay.receive_hello(addon.hello()))
    addon, relay = p.addon(pinned=only_new), p.relay(key=old)
    with pytest.raises(HandshakeError) as exc:
        addon.receive_server_proof(relay.receive_hello(addon.hello()))
    assert _code(exc) is Code.RELAY_KEY_NOT_PINNED


def test_replayed_server_proof_refused_for_new_challenge(p: Parties) -> None:
    first, relay = p.addon(), p.relay()
    recorded = relay.receive_hello(first.hello())
    first.receive_server_proof(recorded)  # genuine the first time
    second = p.addon()
    second.hello()  # a fresh challenge
    with pytest.raises(HandshakeError) as exc:
        second.receive_server_proof(recorded)
    assert _code(exc) is Code.BAD_RELAY_SIGNATURE


def test_mitm_with_another_certificate_refused(p: Parties) -> None:
    # The interceptor terminates TLS with its own (valid-looking) certificate
    # and relays the challenge to the real relay, which signs *its* cert hash.
    addon = p.addon(cert=os.urandom(32))  # what the add-on sees: the interceptor's cert
    real_relay = p.relay()
    with pytest.raises(HandshakeError) as exc:
        addon.receive_server_proof(real_relay.receive_hello(addon.hello()))
    assert _code(exc) is Code.BAD_RELAY_SIGNATURE


def test_relayed_challenge_altered_in_transit_refused(p: Parties) -> None:
    addon, relay = p.addon(), p.relay()
    hello = addon.hello()
    proof = relay.receive_hello(_edit(hello, challenge=_flip(_load(hello)["challenge"], 32)))
    with pytest.raises(HandshakeError) as exc:
        addon.receive_server_proof(proof)
    assert _code(exc) is Code.BAD_RELAY_SIGNATURE


def test_proof_for_another_host_refused(p: Parties) -> None:
    addon, other = p.addon(), p.relay(host="other-relay.example")
    proof = other.receive_hello(addon.hello())
    with pytest.raises(HandshakeError) as exc:
        p.addon().receive_server_proof(proof)  # never said hello: out of order
    assert _code(exc) is Code.OUT_OF_ORDER
    with pytest.raises(HandshakeError) as exc:
        addon.receive_server_proof(proof)
    assert _code(exc) is Code.HOST_MISMATCH
    # Rewriting the host field to ours breaks the signature instead.
    addon2 = p.addon()
    proof2 = other.__class__("other-relay.example", p.relay_key, p.cert_sha256).receive_hello(
        addon2.hello()
    )
    with pytest.raises(HandshakeError) as exc:
        addon2.receive_server_proof(_edit(proof2, host=HOST))
    assert _code(exc) is Code.BAD_RELAY_SIGNATURE


@pytest.mark.parametrize(
    ("field", "mangle", "code"),
    [
        ("nonce", lambda v: _flip(v, 32), Code.BAD_RELAY_SIGNATURE),
        ("signature", lambda v: _flip(v, 64), Code.BAD_RELAY_SIGNATURE),
        ("host", lambda v: "evil.example", Code.HOST_MISMATCH),
        ("key_id", lambda v: "0" * 16, Code.RELAY_KEY_NOT_PINNED),
        ("version", lambda v: 3, Code.UNSUPPORTED_VERSION),
        ("version", lambda v: 0, Code.UNSUPPORTED_VERSION),
    ],
)
def test_tampered_server_proof_refused(
    p: Parties, field: str, mangle: Callable[[object], object], code: HandshakeErrorCode
) -> None:
    addon, relay = p.addon(), p.relay()
    proof = _load(relay.receive_hello(addon.hello()))
    proof[field] = mangle(proof[field])
    with pytest.raises(HandshakeError) as exc:
        addon.receive_server_proof(_dump(proof))
    assert _code(exc) is code
    assert addon.failed


def test_an_older_peer_is_met_in_version_1(p: Parties) -> None:
    """An add-on offering only version 1 gets it; so does one whose relay only
    speaks version 1 (it chooses 1 from what a newer add-on offers); the tunnel
    then carries version 1's header blocks (``Welcome.version``)."""
    old_addon, relay = p.addon(versions=(1,)), p.relay()
    hello = old_addon.hello()
    assert _load(hello)["versions"] == [1]
    proof = relay.receive_hello(hello)
    assert _load(proof)["version"] == 1
    assert relay.version == 1
    relay.receive_client_proof(old_addon.receive_server_proof(proof))
    welcome = old_addon.receive_result(relay.welcome("abc123", "https://abc123.tenant.example/"))
    assert isinstance(welcome, Welcome)
    assert welcome.version == 1

    addon = p.addon()
    proof_by_older_relay = {**_load(p.relay().receive_hello(addon.hello())), "version": 1}
    addon.receive_server_proof(_dump(proof_by_older_relay))  # the version is not signed
    assert addon.version == 1


def test_an_addon_offers_only_versions_it_speaks(p: Parties) -> None:
    for versions in ((), (3,), (1, 3)):
        with pytest.raises(ValueError, match="versions must be some of"):
            p.addon(versions=versions)


def test_error_messages_carry_no_secrets(p: Parties) -> None:
    addon, relay = p.addon(), p.relay()
    hello = addon.hello()
    proof = _load(relay.receive_hello(hello))
    proof["signature"] = _flip(proof["signature"], 64)
    with pytest.raises(HandshakeError) as exc:
        addon.receive_server_proof(_dump(proof))
    text = str(exc.value)
    for secret in (_load(hello)["challenge"], proof["nonce"], proof["signature"]):
        assert isinstance(secret, str)
        assert secret not in text
    assert key_id(p.relay_key.public_key()) in text  # public, and useful to operators


def test_relay_error_before_proof_is_reported_not_trusted(p: Parties) -> None:
    addon = p.addon()
    addon.hello()
    with pytest.raises(HandshakeError) as exc:
        addon.receive_server_proof(
            _dump({"type": "error", "code": "rate_limited", "message": "\x1b[31mslow down"})
        )
    assert _code(exc) is Code.RELAY_REFUSED
    assert "rate_limited" in str(exc.value)
    assert "\x1b" not in str(exc.value)


def test_relay_cannot_skip_its_proof(p: Parties) -> None:
    addon, relay = p.addon(), p.relay()
    addon.hello()
    relay.receive_hello(p.addon().hello())
    with pytest.raises(HandshakeError) as exc:
        addon.receive_server_proof(
            _dump({"type": "welcome", "instance_id": "x", "url": "https://x.ex/", "settings": {}})
        )
    assert _code(exc) is Code.UNEXPECTED_MESSAGE


# -- the add-on's proof, checked by the relay --------------------------------------------


def _to_client_proof(p: Parties) -> tuple[AddonHandshake, RelayHandshake, str]:
    addon, relay = p.addon(), p.relay()
    return addon, relay, addon.receive_server_proof(relay.receive_hello(addon.hello()))


def test_client_proof_for_another_key_refused(p: Parties) -> None:
    # Claiming someone else's (e.g. a linked add-on's) public key without its private key.
    _, relay, proof = _to_client_proof(p)
    victim = public_key_text(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(HandshakeError) as exc:
        relay.receive_client_proof(_edit(proof, public_key=victim))
    assert _code(exc) is Code.BAD_ADDON_SIGNATURE
    assert relay.addon_key is None


def test_wrong_client_signature_refused(p: Parties) -> None:
    _, relay, proof = _to_client_proof(p)
    with pytest.raises(HandshakeError) as exc:
        relay.receive_client_proof(_edit(proof, signature=_flip(_load(proof)["signature"], 64)))
    assert _code(exc) is Code.BAD_ADDON_SIGNATURE


def test_signature_by_an_unknown_key_refused(p: Parties) -> None:
    # A valid signature over the right transcript, but by a key other than the claimed one.
    addon, relay = p.addon(), p.relay()
    hello = addon.hello()
    proof = _load(relay.receive_hello(hello))
    challenge = b64url_decode(str(_load(hello)["challenge"]), length=32)
    nonce = b64url_decode(str(proof["nonce"]), length=32)
    stranger = Ed25519PrivateKey.generate()
    claimed = p.addon_key.public_key()
    signature = stranger.sign(addon_transcript(nonce, challenge, HOST, p.cert_sha256, claimed))
    forged = {
        "type": "client_proof",
        "public_key": public_key_text(claimed),
        "signature": b64url_encode(signature),
        "agent": "homeport-addon/0.1.0",
    }
    with pytest.raises(HandshakeError) as exc:
        relay.receive_client_proof(_dump(forged))
    assert _code(exc) is Code.BAD_ADDON_SIGNATURE


def test_replayed_client_proof_refused(p: Parties) -> None:
    _, _, recorded = _to_client_proof(p)
    relay = p.relay()
    relay.receive_hello(p.addon().hello())  # a new connection, a new nonce
    with pytest.raises(HandshakeError) as exc:
        relay.receive_client_proof(recorded)
    assert _code(exc) is Code.BAD_ADDON_SIGNATURE


def test_client_proof_bound_to_certificate(p: Parties) -> None:
    addon = p.addon()
    relay = p.relay()
    proof = addon.receive_server_proof(relay.receive_hello(addon.hello()))
    # Same messages, but a relay listener with another certificate verifies it.
    other = RelayHandshake(HOST, p.relay_key, os.urandom(32))
    hello2 = p.addon()
    other.receive_hello(hello2.hello())
    with pytest.raises(HandshakeError) as exc:
        other.receive_client_proof(proof)
    assert _code(exc) is Code.BAD_ADDON_SIGNATURE


def test_relay_signature_cannot_be_reflected_as_client_proof(p: Parties) -> None:
    # Domain separation: the relay's own signature and key are no add-on proof.
    addon, relay = p.addon(), p.relay()
    proof = _load(relay.receive_hello(addon.hello()))
    reflected = {
        "type": "client_proof",
        "public_key": public_key_text(p.relay_key.public_key()),
        "signature": proof["signature"],
        "agent": "x",
    }
    with pytest.raises(HandshakeError) as exc:
        relay.receive_client_proof(_dump(reflected))
    assert _code(exc) is Code.BAD_ADDON_SIGNATURE


# -- strict parsing -----------------------------------------------------------------


def _hello(p: Parties) -> Message:
    return _load(p.addon().hello())


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", Code.MALFORMED),
        ("{", Code.MALFORMED),
        ("[]", Code.MALFORMED),
        ('"hello"', Code.MALFORMED),
        ("{}", Code.UNKNOWN_TYPE),
        ('{"type":"bogus"}', Code.UNKNOWN_TYPE),
        ('{"type":1}', Code.UNKNOWN_TYPE),
        ('{"type":"unlinked","link_code":"ABCD","expires_in":60}', Code.UNEXPECTED_MESSAGE),
        ("[" * 5000 + "]" * 5000, Code.TOO_LARGE),
        ("[" * 4000 + "]" * 4000, Code.MALFORMED),
        (" " * (MAX_MESSAGE_SIZE + 1), Code.TOO_LARGE),
        ("é" * (MAX_MESSAGE_SIZE // 2 + 1), Code.TOO_LARGE),  # few chars, many bytes
    ],
)  # fmt: skip
def test_relay_rejects_garbage(p: Parties, text: str, code: HandshakeErrorCode) -> None:
    relay = p.relay()
    with pytest.raises(HandshakeError) as exc:
        relay.receive_hello(text)
    assert _code(exc) is code
    assert relay.failed


@pytest.mark.parametrize(
    "mangle",
    [
        lambda m: m.pop("challenge"),
        lambda m: m.update(extra=1),
        lambda m: m.update(protocol=1),
        lambda m: m.update(versions=1),
        lambda m: m.update(versions=[]),
        lambda m: m.update(versions=["1"]),
        lambda m: m.update(versions=[True]),
        lambda m: m.update(versions=[1.0]),
        lambda m: m.update(versions=list(range(1, 18))),
        lambda m: m.update(challenge=123),
        lambda m: m.update(challenge=b64url_encode(os.urandom(16))),  # 128 bits: too short here
        lambda m: m.update(challenge=b64url_encode(os.urandom(33))),
        lambda m: m.update(challenge=b64url_encode(os.urandom(32)) + "="),
        lambda m: m.update(challenge="+" + b64url_encode(os.urandom(32))[1:]),
    ],
)
def test_relay_rejects_malformed_hello(p: Parties, mangle: Callable[[Message], object]) -> None:
    message = _hello(p)
    mangle(message)
    with pytest.raises(HandshakeError) as exc:
        p.relay().receive_hello(_dump(message))
    assert _code(exc) is Code.MALFORMED


def test_relay_rejects_duplicate_keys_and_nan(p: Parties) -> None:
    text = _dump(_hello(p))
    for bad in (
        text[:-1] + ',"type":"hello"}',
        text.replace('"versions":[1,2]', '"versions":[NaN]'),
    ):
        with pytest.raises(HandshakeError) as exc:
            p.relay().receive_hello(bad)
        assert _code(exc) is Code.MALFORMED


def test_version_negotiation(p: Parties) -> None:
    relay = p.relay()
    proof = _load(relay.receive_hello(_dump({**_hello(p), "versions": [7, 1, 3]})))
    assert proof["version"] == 1  # an older add-on: served in the version it speaks
    proof = _load(p.relay().receive_hello(_dump({**_hello(p), "versions": [2, 1, 9]})))
    assert proof["version"] == 2  # the newest both speak
    for versions in ([3], [0, 9]):
        with pytest.raises(HandshakeError) as exc:
            p.relay().receive_hello(_dump({**_hello(p), "versions": versions}))
        assert _code(exc) is Code.UNSUPPORTED_VERSION
    with pytest.raises(HandshakeError) as exc:
        p.relay().receive_hello(_dump({**_hello(p), "protocol": "other"}))
    assert _code(exc) is Code.UNSUPPORTED_PROTOCOL


@pytest.mark.parametrize(
    ("field", "value"),
    [
        # Random values get fixed ids: every pytest-xdist worker must collect the same names.
        pytest.param("nonce", b64url_encode(os.urandom(31)), id="nonce-31-bytes"),
        pytest.param("signature", b64url_encode(os.urandom(63)), id="signature-63-bytes"),
        pytest.param("signature", b64url_encode(os.urandom(65)), id="signature-65-bytes"),
        ("key_id", "ABCDEF0123456789"),
        ("key_id", "0123"),
        ("version", "1"),
        ("version", True),
        ("host", None),
    ],
)
def test_addon_rejects_malformed_server_proof(p: Parties, field: str, value: object) -> None:
    addon, relay = p.addon(), p.relay()
    proof = _edit(relay.receive_hello(addon.hello()), **{field: value})
    with pytest.raises(HandshakeError) as exc:
        addon.receive_server_proof(proof)
    assert _code(exc) is Code.MALFORMED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("public_key", "ed25519:short"),
        pytest.param(
            "public_key",
            public_key_text(Ed25519PrivateKey.generate().public_key()) + "=",
            id="public_key-padded",
        ),
        pytest.param("signature", b64url_encode(os.urandom(63)), id="signature-63-bytes"),
        ("agent", ""),
        ("agent", "x" * 129),
        ("agent", "evil\nlog line"),
        ("agent", 5),
    ],
)
def test_relay_rejects_malformed_client_proof(p: Parties, field: str, value: object) -> None:
    _, relay, proof = _to_client_proof(p)
    with pytest.raises(HandshakeError) as exc:
        relay.receive_client_proof(_edit(proof, **{field: value}))
    assert _code(exc) is Code.MALFORMED


@pytest.mark.parametrize(
    "result",
    [
        {"type": "welcome", "instance_id": "a", "url": "http://a.example/", "settings": {}},
        {"type": "welcome", "instance_id": "a", "url": "https://a.example/", "settings": []},
        {"type": "welcome", "instance_id": "a b", "url": "https://a.example/", "settings": {}},
        {"type": "welcome", "instance_id": "a", "url": "https://a.example/"},
        {"type": "unlinked", "link_code": "ABCD", "expires_in": 0},
        {"type": "unlinked", "link_code": "ABCD", "expires_in": 600.0},
        {"type": "unlinked", "link_code": "AB", "expires_in": 600},
        {"type": "error", "code": "Bad Code", "message": "x"},
        {"type": "error", "code": "x", "message": "line\nbreak"},
        {"type": "server_proof"},
    ],
)
def test_addon_rejects_malformed_result(p: Parties, result: Message) -> None:
    addon, relay, proof = _to_client_proof(p)
    relay.receive_client_proof(proof)
    with pytest.raises(HandshakeError) as exc:
        addon.receive_result(_dump(result))
    assert _code(exc) in {Code.MALFORMED, Code.UNEXPECTED_MESSAGE}
    assert addon.failed


def test_relay_builders_refuse_what_the_addon_would_reject(p: Parties) -> None:
    builds: list[Callable[[RelayHandshake], str]] = [
        lambda r: r.welcome("a", "http://plain.example/"),
        lambda r: r.unlinked("K7QX", 10**6),
        lambda r: r.welcome("a", "https://a.example/", {"blob": "x" * MAX_MESSAGE_SIZE}),
    ]
    for build in builds:
        _, relay, proof = _to_client_proof(p)
        relay.receive_client_proof(proof)
        with pytest.raises(ValueError, match="invalid"):
            build(relay)
        assert relay.failed
    with pytest.raises(ValueError, match="invalid"):
        p.relay().error("Not A Code", "x")


# -- call order -------------------------------------------------------------------


def _out_of_order(call: Callable[[], object]) -> None:
    with pytest.raises(HandshakeError) as exc:
        call()
    assert _code(exc) is Code.OUT_OF_ORDER


def test_addon_call_order(p: Parties) -> None:
    relay = p.relay()
    addon = p.addon()
    _out_of_order(lambda: addon.receive_server_proof("{}"))
    assert addon.failed
    _out_of_order(addon.hello)  # a failed handshake stays failed

    addon = p.addon()
    proof = relay.receive_hello(addon.hello())
    _out_of_order(addon.hello)
    addon = p.addon()
    addon.hello()
    _out_of_order(lambda: addon.receive_result("{}"))

    addon, relay, client_proof = _to_client_proof(p)
    _out_of_order(lambda: addon.receive_server_proof(proof))
    relay.receive_client_proof(client_proof)
    _out_of_order(lambda: addon.receive_result(relay.unlinked("ABCD-EFGH", 60)))  # failed above

    addon, relay, client_proof = _to_client_proof(p)
    relay.receive_client_proof(client_proof)
    addon.receive_result(relay.unlinked("ABCD-EFGH", 60))
    _out_of_order(lambda: addon.receive_result(relay.error("late", "x")))


def test_addon_refuses_to_continue_after_a_bad_proof(p: Parties) -> None:
    addon, impostor = p.addon(), p.relay(key=Ed25519PrivateKey.generate())
    proof = impostor.receive_hello(addon.hello())
    with pytest.raises(HandshakeError):
        addon.receive_server_proof(proof)
    # A retry with a genuine-looking proof on the same connection is not allowed.
    _out_of_order(lambda: addon.receive_server_proof(proof))
    _out_of_order(lambda: addon.receive_result("{}"))


def test_relay_call_order(p: Parties) -> None:
    relay = p.relay()
    _out_of_order(lambda: relay.receive_client_proof("{}"))
    _out_of_order(lambda: relay.welcome("a", "https://a.example/"))

    relay = p.relay()
    relay.receive_hello(p.addon().hello())
    _out_of_order(lambda: relay.receive_hello("{}"))

    relay = p.relay()
    relay.receive_hello(p.addon().hello())
    _out_of_order(lambda: relay.welcome("a", "https://a.example/"))  # not yet authenticated
    _out_of_order(lambda: relay.unlinked("ABCD", 60))

    _, relay, proof = _to_client_proof(p)
    relay.receive_client_proof(proof)
    _out_of_order(lambda: relay.receive_client_proof(proof))


def test_relay_can_send_error_after_failure_but_not_after_result(p: Parties) -> None:
    relay = p.relay()
    with pytest.raises(HandshakeError) as exc:
        relay.receive_hello(_dump({**_hello(p), "versions": [9]}))
    reply = relay.error(exc.value.code, exc.value.message)
    assert _load(reply) == {
        "type": "error",
        "code": "unsupported_version",
        "message": exc.value.message,
    }
    _out_of_order(lambda: relay.error("again", "x"))


def test_constructor_arguments_checked(p: Parties) -> None:
    with pytest.raises(ValueError, match="pinned"):
        p.addon(pinned=[])
    with pytest.raises(ValueError, match="32-byte"):
        p.addon(cert=b"\x00" * 31)
    with pytest.raises(ValueError, match="32-byte"):
        p.relay(cert=b"\x00" * 48)
    with pytest.raises(ValueError, match="host"):
        p.relay(host="not a host")
    with pytest.raises(ValueError, match="agent"):
        AddonHandshake(HOST, [p.relay_key.public_key()], p.addon_key, p.cert_sha256, agent="")


# -- fuzz: nothing but HandshakeError escapes --------------------------------------------

_FIELD_NAMES = ["type", "protocol", "versions", "challenge", "version", "host", "key_id"]
_FIELD_NAMES += ["nonce", "signature", "public_key", "agent", "code", "message"]
_TYPES = ["hello", "server_proof", "client_proof", "welcome", "unlinked", "error"]
_json_values: st.SearchStrategy[object] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_messages = st.one_of(
    st.text(max_size=300),
    st.dictionaries(
        st.sampled_from(_FIELD_NAMES),
        _json_values | st.sampled_from([*_TYPES, b64url_encode(bytes(32)), HOST]),
    ).map(_dump),
)


@settings(max_examples=300, deadline=None)
@given(first=_messages, second=_messages)
def test_fuzz_only_handshake_errors(first: str, second: str) -> None:
    parties = Parties()
    relay = parties.relay()
    with contextlib.suppress(HandshakeError):
        relay.receive_hello(first)
        relay.receive_client_proof(second)
    addon = parties.addon()
    addon.hello()
    with contextlib.suppress(HandshakeError):
        addon.receive_server_proof(first)
        addon.receive_result(second)


# -- over real TLS on loopback, with a man in the middle ----------------------------------


class LineChannel:
    """Newline-framed text messages over a TLS stream (stands in for WebSocket)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, text: str) -> None:
        self.writer.write(text.encode() + b"\n")
        await self.writer.drain()

    async def receive(self) -> str:
        line = await asyncio.wait_for(self.reader.readline(), 10)
        if not line:
            raise ConnectionError("closed")
        return line.decode().rstrip("\n")


@contextlib.asynccontextmanager
async def _serve(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object],
    context: object,
) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)  # type: ignore[arg-type]
    async with server:
        yield server.sockets[0].getsockname()[1]


async def _addon_dial(
    port: int, trust: Path, pinned: Ed25519PublicKey, key: Ed25519PrivateKey
) -> Welcome | Unlinked | RelayRefused:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_context(extra_ca=trust), server_hostname=HOST
    )
    try:
        channel = LineChannel(reader, writer)
        observed = peer_certificate_sha256(writer.get_extra_info("ssl_object"))
        addon = AddonHandshake(HOST, [pinned], key, observed)
        await channel.send(addon.hello())
        await channel.send(addon.receive_server_proof(await channel.receive()))
        return addon.receive_result(await channel.receive())
    finally:
        writer.close()


async def test_real_tls_handshake_and_mitm(tmp_path: Path) -> None:
    ca = ensure_dev_ca(tmp_path / "data")
    cert, key = ca.issue_server_certificate([HOST], tmp_path / "relay")
    relay_key, addon_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    relay_cert_hash = local_certificate_sha256(cert)
    relay_saw: list[Ed25519PublicKey | HandshakeError] = []

    async def relay_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        channel = LineChannel(reader, writer)
        relay = RelayHandshake(HOST, relay_key, relay_cert_hash)
        with contextlib.suppress(ConnectionError):
            await channel.send(relay.receive_hello(await channel.receive()))
            try:
                relay_saw.append(relay.receive_client_proof(await channel.receive()))
            except HandshakeError as exc:
                relay_saw.append(exc)
                await channel.send(relay.error(exc.code, exc.message))
            else:
                await channel.send(relay.welcome("inst1", "https://inst1.tenant.example/"))
        writer.close()

    # An attacker holding a certificate for HOST from a CA the add-on trusts
    # (a mis-issuing public CA), relaying every message to the real relay.
    rogue = create_independent_ca(tmp_path / "rogue")
    rogue_cert, rogue_key = rogue.issue_server_certificate([HOST], tmp_path / "mitm")
    trust_both = tmp_path / "trust.pem"
    trust_both.write_bytes(ca.cert_path.read_bytes() + rogue.cert_path.read_bytes())

    async with _serve(relay_handler, server_context(cert, key)) as relay_port:

        async def mitm_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", relay_port, ssl=client_context(ca.cert_path), server_hostname=HOST
            )

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError):
                    while line := await src.readline():
                        dst.write(line)
                        await dst.drain()
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        # Genuine path: linked.
        result = await _addon_dial(relay_port, trust_both, relay_key.public_key(), addon_key)
        assert result == Welcome("inst1", "https://inst1.tenant.example/", {}, version=2)
        assert isinstance(relay_saw[-1], Ed25519PublicKey)

        # Through the interceptor: TLS verifies (trusted CA, right name), but
        # the relay's signature covers its own certificate, not the rogue one.
        async with _serve(mitm_handler, server_context(rogue_cert, rogue_key)) as mitm_port:
            with pytest.raises(HandshakeError) as exc:
                await _addon_dial(mitm_port, trust_both, relay_key.public_key(), addon_key)
            assert exc.value.code is Code.BAD_RELAY_SIGNATURE
        assert len(relay_saw) == 1  # the add-on never sent a client proof to the interceptor
