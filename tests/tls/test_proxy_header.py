"""The PROXY v2 parser: what HAProxy sends is read; everything else is refused, never guessed."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proxy_v2 import LOCAL, v2_header

from homeport.tls.proxy_header import (
    HEAD_SIZE,
    MAX_BODY,
    SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    body_length,
    parse_header,
)


def test_ipv4_client_is_read() -> None:
    header = v2_header(("198.51.100.4", 40123))
    assert body_length(header[:HEAD_SIZE]) == 12
    assert parse_header(header) == ProxyHeader(client=("198.51.100.4", 40123))


def test_ipv6_client_is_read() -> None:
    header = v2_header(("2001:db8::5", 443), ("2001:db8::1", 8443))
    assert parse_header(header) == ProxyHeader(client=("2001:db8::5", 443))


def test_tlvs_are_skipped_when_well_formed() -> None:
    header = v2_header(tlvs=b"\x04\x00\x00" + b"\x01\x00\x02h2")  # NOOP, ALPN
    assert parse_header(header).client == ("203.0.113.7", 50000)


def test_local_command_means_use_the_socket_peer() -> None:
    """HAProxy's own connections (health checks) say LOCAL: no client to read."""
    assert parse_header(v2_header(command=LOCAL)) == ProxyHeader(client=None)
    unspec = SIGNATURE + b"\x20\x00\x00\x00"
    assert parse_header(unspec) == ProxyHeader(client=None)


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"[:HEAD_SIZE], "v1"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(5), "signature"),  # ClientHello
        (SIGNATURE + b"\x11\x11\x00\x0c", "version 1"),
        (SIGNATURE + b"\x31\x11\x00\x0c", "version 3"),
        (SIGNATURE + b"\x22\x11\x00\x0c", "command"),
        (SIGNATURE + b"\x21\x11" + (MAX_BODY + 1).to_bytes(2, "big"), "at most"),
        (SIGNATURE + b"\x21\x11\xff\xff", "at most"),
    ],
)
def test_bad_heads_are_refused(head: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        body_length(head)


@pytest.mark.parametrize(
    "header",
    [
        SIGNATURE + b"\x21\x11\x00\x08" + bytes(8),  # IPv4 needs 12 bytes
        SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),  # IPv6 needs 36
        SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),  # UDP
        SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12),  # family 4
        SIGNATURE + b"\x21\x13\x00\x0c" + bytes(12),  # transport 3
        v2_header(tlvs=b"\x04\x00"),  # truncated TLV
        v2_header(tlvs=b"\x04\x00\x05ab"),  # TLV past the end
        v2_header() + b"\x16",  # more than announced
        v2_header()[:-1],  # less
    ],
)
def test_bad_bodies_are_refused(header: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_header(header)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=0, max_size=HEAD_SIZE + MAX_BODY + 8))
def test_any_bytes_give_a_header_or_a_clean_refusal(data: bytes) -> None:
    try:
        result = parse_header(data)
    except ProxyHeaderError:
        return
    assert isinstance(result, ProxyHeader)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(min_size=HEAD_SIZE - 4, max_size=HEAD_SIZE - 4),
    st.integers(0, 0xFFFF),
)
def test_a_head_never_announces_more_than_the_bound(prefix: bytes, length: int) -> None:
    head = SIGNATURE + bytes([0x21, 0x11]) + length.to_bytes(2, "big")
    for candidate in (head, prefix + head[-4:]):
        with contextlib.suppress(ProxyHeaderError):
            assert body_length(candidate) <= MAX_BODY


@settings(max_examples=300, deadline=None)
@given(
    st.ip_addresses(v=4) | st.ip_addresses(v=6),
    st.integers(0, 65535),
    st.binary(max_size=40),
)
def test_what_haproxy_writes_is_read_back(address: object, port: int, value: bytes) -> None:
    tlv = b"\xe0" + len(value).to_bytes(2, "big") + value
    server = "127.0.0.1" if ":" not in str(address) else "::1"
    assert parse_header(v2_header((str(address), port), (server, 443), tlvs=tlv)).client == (
        str(address),
        port,
    )
