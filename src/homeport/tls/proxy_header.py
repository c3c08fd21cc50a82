"""A strict parser of the PROXY protocol version 2 header (bytes in, result out).

HAProxy in TCP mode (``send-proxy-v2``) puts this binary header in front of
each connection it opens to a relay node, naming the client it came from; the
relay reads it before TLS starts (``homeport.tls.proxy_listener``). Format
(HAProxy's ``proxy-protocol.txt`` §2.2): a 12-byte signature, one byte of
version and command, one of address family and transport, a 2-byte big-endian
length, then that many bytes: the addresses, then TLVs.

Threats it stops (the header comes from a trusted network only, but a
confused or compromised peer there must still not get more than a refusal):

* reading without bound: the announced length is capped at
  :data:`MAX_BODY` (HAProxy sends 12 or 36 bytes of addresses and no TLVs
  unless told to), so a reader never waits for or holds more;
* ambiguity: only version 2 is accepted (no v1 text, which would need a
  line reader and has no length up front), only the LOCAL and PROXY
  commands, only STREAM transport for addresses, and a body too short for
  its family or with a TLV running past its end is refused, never guessed.

Why not a library: ``proxy-protocol`` on PyPI (the one well-known parser)
accepts v1 and v2 alike behind its own stream reader; the listener needs
the length first, to read exactly the header and not one byte of the TLS
ClientHello behind it, and a v2-only decision. The format is this small.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = [
    "HEAD_SIZE",
    "MAX_BODY",
    "SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "body_length",
    "parse_header",
]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Signature, version/command, family/transport, length.
HEAD_SIZE = 16
#: Largest body accepted: IPv6 addresses (36 bytes) and room for a few TLVs.
MAX_BODY = 256

_LOCAL, _PROXY = 0x0, 0x1
_UNSPEC, _INET, _INET6, _UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
#: Address block size per family: source, destination, source port, destination port.
_ADDRESSES = {_INET: 12, _INET6: 36, _UNIX: 216}


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY v2 header this relay accepts (the connection is closed)."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a valid header says.

    ``client``: the address the connection came from (as ``str(ipaddress)``) and
    its port; None for the LOCAL command (HAProxy's own connections, such as
    health checks) and for families without an IP address (UNSPEC, UNIX), where
    the socket peer stands.
    """

    client: tuple[str, int] | None


def body_length(head: bytes) -> int:
    """The length the first :data:`HEAD_SIZE` bytes announce; refuses anything else first.

    Raises :class:`ProxyHeaderError` for a wrong signature (v1 text included), an
    unknown version or command, or a length over :data:`MAX_BODY`.
    """
    if len(head) != HEAD_SIZE:
        raise ProxyHeaderError("short header")
    if head[:12] != SIGNATURE:
        if head.startswith(b"PROXY "):
            raise ProxyHeaderError("PROXY protocol v1 (text) is not accepted")
        raise ProxyHeaderError("no PROXY v2 signature")
    version, command = head[12] >> 4, head[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"PROXY protocol version {version}")
    if command not in (_LOCAL, _PROXY):
        raise ProxyHeaderError(f"unknown command {command}")
    length = int.from_bytes(head[14:16], "big")
    if length > MAX_BODY:
        raise ProxyHeaderError(f"header body of {length} bytes (at most {MAX_BODY})")
    return length


def parse_header(header: bytes) -> ProxyHeader:
    """The whole header (head and body, nothing after it), checked and read."""
    length = body_length(header[:HEAD_SIZE])
    if len(header) != HEAD_SIZE + length:
        raise ProxyHeaderError("header length does not match what it announces")
    command = header[12] & 0x0F
    family, transport = header[13] >> 4, header[13] & 0x0F
    if family not in (_UNSPEC, *_ADDRESSES) or transport > 2:
        raise ProxyHeaderError("unknown address family or transport")
    body = header[HEAD_SIZE:]
    size = _ADDRESSES.get(family, 0)
    if len(body) < size:
        raise ProxyHeaderError("body too short for its address family")
    _check_tlvs(body[size:])
    if command == _LOCAL or family in (_UNSPEC, _UNIX):
        return ProxyHeader(client=None)
    if transport != _STREAM:
        raise ProxyHeaderError("not a stream connection")
    if family == _INET:
        address = str(ipaddress.IPv4Address(body[0:4]))
        port = int.from_bytes(body[8:10], "big")
    else:
        address = str(ipaddress.IPv6Address(body[0:16]))
        port = int.from_bytes(body[32:34], "big")
    return ProxyHeader(client=(address, port))


def _check_tlvs(data: bytes) -> None:
    """TLVs (type, 2-byte length, value) must tile the rest exactly; their values are unused."""
    at = 0
    while at < len(data):  # bounded: each step advances by at least 3 bytes
        if at + 3 > len(data):
            raise ProxyHeaderError("truncated TLV")
        at += 3 + int.from_bytes(data[at + 1 : at + 3], "big")
        if at > len(data):
            raise ProxyHeaderError("TLV runs past the header")
