"""PROXY protocol v2 headers as HAProxy writes them (``send-proxy-v2``), for tests."""

from __future__ import annotations

import ipaddress

from homeport.tls.proxy_header import SIGNATURE

PROXY, LOCAL = 0x21, 0x20


def v2_header(
    client: tuple[str, int] = ("203.0.113.7", 50000),
    server: tuple[str, int] = ("127.0.0.1", 443),
    *,
    command: int = PROXY,
    tlvs: bytes = b"",
) -> bytes:
    """A header naming ``client`` (IPv4 or IPv6, TCP); ``tlvs`` appended as they are."""
    source, target = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
    family = 0x11 if source.version == 4 else 0x21
    body = (
        source.packed
        + target.packed
        + client[1].to_bytes(2, "big")
        + server[1].to_bytes(2, "big")
        + tlvs
    )
    return SIGNATURE + bytes([command, family]) + len(body).to_bytes(2, "big") + body
