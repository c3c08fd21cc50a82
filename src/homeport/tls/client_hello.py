"""The ALPN protocols a TLS ClientHello offers, read before the certificate is chosen.

Python's ``ssl`` calls ``sni_callback`` (where the relay picks a certificate)
before it negotiates ALPN, and exposes no ClientHello. TLS-ALPN-01 needs the
challenge certificate to go *only* to clients offering ``acme-tls/1``
(RFC 8737 §3, R-ACME-07), not to a browser opening the account host during a
validation. CPython's (private, since 3.8) ``SSLContext._msg_callback`` sees
every handshake message as it arrives, the ClientHello before the SNI
callback; :class:`HelloRecorder` parses the offered ALPN list from it onto
the connection object. It is switched on only while a TLS-ALPN-01 challenge
is pending, so ordinary traffic pays nothing. If CPython ever drops the hook,
no ALPN is recorded and the challenge certificate is never served
(``tests/tls/test_alpn.py`` then fails): fail closed.
"""

from __future__ import annotations

import ssl
from typing import Any

__all__ = ["HelloRecorder", "offered_alpn", "recorded_alpn"]

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_ALPN_EXTENSION = 16
_ATTRIBUTE = "homeport_offered_alpn"


def offered_alpn(message: bytes) -> tuple[str, ...] | None:
    """ALPN names in a ClientHello handshake message (with its 4-byte header); None if absent.

    Strictly bounds-checked: anything malformed yields None (no ALPN), never an error.
    """
    try:
        if message[0] != _CLIENT_HELLO:
            return None
        end = min(len(message), 4 + int.from_bytes(message[1:4]))
        pos = 4 + 2 + 32  # header, legacy_version, random
        pos += 1 + message[pos]  # legacy_session_id
        pos += 2 + int.from_bytes(message[pos : pos + 2])  # cipher_suites
        pos += 1 + message[pos]  # legacy_compression_methods
        extensions_end = min(end, pos + 2 + int.from_bytes(message[pos : pos + 2]))
        pos += 2
        while pos + 4 <= extensions_end:
            kind = int.from_bytes(message[pos : pos + 2])
            length = int.from_bytes(message[pos + 2 : pos + 4])
            body = message[pos + 4 : pos + 4 + length]
            pos += 4 + length
            if kind != _ALPN_EXTENSION or len(body) != length:
                continue
            names: list[str] = []
            inner, stop = 2, min(len(body), 2 + int.from_bytes(body[:2]))
            while inner < stop:
                size = body[inner]
                name = body[inner + 1 : inner + 1 + size]
                if size == 0 or len(name) != size:
                    return None
                names.append(name.decode("ascii"))
                inner += 1 + size
            return tuple(names)
    except (IndexError, UnicodeDecodeError):
        return None
    return None


def recorded_alpn(ssl_object: object) -> tuple[str, ...]:
    """What :class:`HelloRecorder` saw this connection offer (empty if nothing)."""
    value = getattr(ssl_object, _ATTRIBUTE, None)
    return value if isinstance(value, tuple) else ()


class HelloRecorder:
    """Installs/removes the ClientHello hook on a listening context."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context

    @property
    def available(self) -> bool:
        return hasattr(self._context, "_msg_callback")

    def enable(self, on: bool) -> None:
        if self.available:
            # Connections keep the callback they were created with; new ones follow this.
            self._context._msg_callback = self._record if on else None  # type: ignore[attr-defined]

    @staticmethod
    def _record(
        conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: bytes
    ) -> None:
        if direction != "read" or content_type != _HANDSHAKE or msg_type != _CLIENT_HELLO:
            return
        try:
            setattr(conn, _ATTRIBUTE, offered_alpn(data) or ())
        except AttributeError:  # an object without a __dict__: record nothing
            return
