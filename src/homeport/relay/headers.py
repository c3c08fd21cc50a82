"""Header hygiene at the relay, in both directions.

Threats this stops:

* Spoofed client addresses: a browser's own ``Forwarded`` / ``X-Forwarded-*`` /
  ``X-Real-IP`` never reach Home Assistant; the relay writes its own view.
  (Home Assistant trusts these headers from the add-on, so letting a browser
  set them would let anyone dodge HA's login-failure bans.)
* Credential leaks: the relay's own cookies are cut out of ``Cookie`` before a
  request enters the tunnel, so Home Assistant (or an integration logging
  requests) never sees a Homeport session.
* Cookie tossing: a ``Set-Cookie`` coming back from the tunnel that uses the
  relay's cookie names or a ``Domain`` attribute is dropped, so a tenant page
  cannot plant or overwrite cookies outside its own host.
* Hop-by-hop confusion: connection-level headers belong to one hop only.
* Underscore aliases: a header name with ``_`` (``x_forwarded_for``) is
  dropped, as nginx does by default.  Backends that map ``_`` and ``-`` to the
  same name (CGI/WSGI environments, some frameworks) would otherwise read it
  as the ``X-Forwarded-For`` the relay just cleaned, and a browser could still
  claim any address; no header a browser or Home Assistant needs has one.
"""

from __future__ import annotations

from collections.abc import Iterable

from homeport.protocol.heads import HOP_BY_HOP, Headers, connection_tokens, valid_field

COOKIE_PREFIX = "__Host-homeport"

SPOOFABLE = frozenset(
    {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip"}
)
# The relay and the add-on each run their own WebSocket handshake.
WEBSOCKET_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}
)
#: Request fields never carried into the tunnel (plus what ``Connection`` lists);
#: ``Expect: 100-continue`` is answered by the relay itself.
_DROPPED = HOP_BY_HOP | SPOOFABLE | {"host", "expect"}
_DROPPED_WS = _DROPPED | WEBSOCKET_HANDSHAKE
_DROPPED_BYTES = frozenset(name.encode() for name in _DROPPED)
_DROPPED_WS_BYTES = frozenset(name.encode() for name in _DROPPED_WS)
# Banners and headers the relay sets itself on the way out.
RESPONSE_OWNED = frozenset({"server", "x-powered-by", "strict-transport-security", "date"})
RESPONSE_DROPPED = HOP_BY_HOP | RESPONSE_OWNED


def request_headers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    client_ip: str,
    public_host: str,
    websocket: bool,
) -> Headers:
    """Headers for the tunnel: cleaned, then the relay's own forwarding view added."""
    pairs = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in raw]
    dropped = _DROPPED_WS if websocket else _DROPPED
    listed = [v for n, v in pairs if n == "connection"]
    if listed:  # rare: most browsers send no Connection header over HTTP/1.1 keep-alive
        dropped = dropped | connection_tokens(listed)
    out: Headers = []
    for name, value in pairs:
        if name in dropped or "_" in name:
            # A name with "_" could pass for a hyphenated one the relay sets or cleans.
            continue
        if name == "cookie":
            value = strip_relay_cookies(value)
            if not value:
                continue
        out.append((name, value))
    out += [
        ("x-forwarded-for", client_ip),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", public_host),
    ]
    return out


def request_fields(
    raw: list[tuple[bytes, bytes]],
    *,
    client_ip: str,
    public_host: str,
    websocket: bool,
) -> tuple[list[bytes], list[bytes]]:
    """The same as :func:`request_headers`, as (names, values) in bytes, for the data plane.

    The relay's proxy parses bytes and the tunnel carries bytes: cleaning them
    as bytes saves a decode and an encode of every field of every request.
    """
    dropped = _DROPPED_WS_BYTES if websocket else _DROPPED_BYTES
    names: list[bytes] = []
    values: list[bytes] = []
    listed: list[str] = []
    for name, value in raw:
        lower = name.lower()
        if lower in dropped:
            # "Connection: keep-alive" (or close) lists nothing that is not dropped anyway.
            if lower == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                listed.append(value.decode("latin-1"))
            continue
        if b"_" in lower:
            continue  # could pass for a hyphenated name the relay sets or cleans
        if lower == b"cookie":
            value = strip_relay_cookie_bytes(value)
            if not value:
                continue
        names.append(lower)
        values.append(value)
    if listed:  # rare: most browsers list no other field in Connection
        tokens = {t.encode("latin-1") for t in connection_tokens(listed)} - dropped
        if tokens:
            kept_pairs = [(n, v) for n, v in zip(names, values, strict=True) if n not in tokens]
            names = [n for n, _ in kept_pairs]
            values = [v for _, v in kept_pairs]
    names += _FORWARDED_NAMES
    values += [client_ip.encode("latin-1"), b"https", public_host.encode("latin-1")]
    return names, values


#: Connection values that name no field besides the hop-by-hop ones always dropped.
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})
_FORWARDED_NAMES = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")


def strip_relay_cookies(header: str) -> str:
    kept = []
    for part in header.split(";"):
        name = part.split("=", 1)[0].strip()
        if name and not name.startswith(COOKIE_PREFIX):
            kept.append(part.strip())
    return "; ".join(kept)


#: What ``str.strip()`` strips from a latin-1 decoded value: the bytes version must
#: cut exactly the same cookies (a name behind a NO-BREAK SPACE included).
_SPACE = bytes(c for c in range(256) if chr(c).isspace())
_COOKIE_PREFIX = COOKIE_PREFIX.encode("latin-1")


def strip_relay_cookie_bytes(header: bytes) -> bytes:
    """:func:`strip_relay_cookies` on bytes, for the data plane (the same result, encoded).

    Every signed-in request carries the relay's own session cookie, so this
    runs on nearly every request: as bytes it saves a decode, an encode and
    the split of each cookie's name.
    """
    kept = []
    for part in header.split(b";"):
        part = part.strip(_SPACE)
        # A cookie's name is what comes before "=": an empty one (the part starts
        # with "=", byte 61) is dropped, as strip_relay_cookies drops it.
        if part and part[0] != 61 and not part.startswith(_COOKIE_PREFIX):
            kept.append(part)
    return b"; ".join(kept)


def response_headers(headers: Headers) -> Headers:
    """Headers from the tunnel that may reach the browser."""
    dropped = RESPONSE_DROPPED
    listed = [v for n, v in headers if n == "connection"]
    if listed:
        dropped = dropped | connection_tokens(listed)
    out: Headers = []
    for name, value in headers:
        if name in dropped:
            continue
        if not valid_field(name.encode("latin-1"), value.encode("latin-1")):
            continue  # the head decoder already refuses these; never trust one layer
        if name == "set-cookie" and not acceptable_cookie(value):
            continue
        out.append((name, value))
    return out


def acceptable_cookie(value: str) -> bool:
    name = value.split("=", 1)[0].strip()
    if name.startswith(COOKIE_PREFIX) or name.lower().startswith("__host-homeport"):
        return False
    attributes = [a.strip().split("=", 1)[0].strip().lower() for a in value.split(";")[1:]]
    return "domain" not in attributes
