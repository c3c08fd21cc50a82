"""HTTP/1.1 messages to Home Assistant, written from the tunnel's parsed heads, and back.

Threats this stops:

* Request smuggling: a request is serialised here from the tunnel's parsed,
  validated head, never copied from raw bytes.  Its body framing is the
  add-on's own: ``content-length`` when the relay's head carries one (and the
  exchange then passes exactly that many bytes, see ``exchange.py``),
  ``chunked`` otherwise; whatever framing fields the head held are dropped.
  The finished head is checked once more for CR, LF and NUL inside a line.
* SSRF / open proxy: only origin-form targets (``/path?query``); absolute-form,
  authority-form and ``//host`` targets and ``CONNECT`` are refused (the
  tunnel's head decoder refuses them already: never trust one layer).  ``Host``
  is Home Assistant's own name, so no request names another virtual host.
* Header spoofing: hop-by-hop fields, and those a ``Connection`` field names,
  are dropped both ways.  The ``X-Forwarded-*`` headers are the relay's (it
  strips the browser's own), and are sent only while Home Assistant trusts
  the add-on as a proxy (``addon/ha_trust.py``): before that it would answer
  400 to every request carrying them.
* Open redirects: a ``Location`` naming Home Assistant's internal address
  becomes a path on the public host (:meth:`Origin.public_location`).
"""

from __future__ import annotations

from homeport.addon.upstream import Origin, RawHeaders
from homeport.protocol import Headers
from homeport.protocol.heads import HOP_BY_HOP, connection_tokens

#: Never passed on from the tunnel's head: hop-by-hop fields, ``Host`` (Home
#: Assistant's own is written) and the body's length (the framing is ours).
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}
#: The relay's view of the client; only for a Home Assistant that trusts us.
FORWARDING = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"})
#: The add-on runs its own WebSocket handshake with Home Assistant.
WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-accept",
        "sec-websocket-protocol",
    }
)
_DROP = NOT_FORWARDED
_DROP_UNTRUSTED = NOT_FORWARDED | FORWARDING
_DROP_WS = NOT_FORWARDED | WEBSOCKET_HANDSHAKE
_DROP_WS_UNTRUSTED = NOT_FORWARDED | FORWARDING | WEBSOCKET_HANDSHAKE
#: Response fields never relayed (``Host`` has no business in an answer either).
_RESPONSE_DROP = frozenset(name.encode() for name in HOP_BY_HOP | {"host"})


_CR_LF_NUL = b"\r\n\0"


class RequestRefused(ValueError):
    """A request the add-on will not send to Home Assistant (the stream is refused)."""


def check_target(method: str, target: str) -> None:
    """Origin-form only, and no ``CONNECT`` (SSRF, see the module docstring)."""
    if method == "CONNECT":
        raise RequestRefused("CONNECT is not forwarded")
    if target[:1] != "/" or target[1:2] == "/" or " " in target:
        raise RequestRefused("target must be origin-form")


def request_head(
    method: str,
    target: str,
    headers: Headers,
    origin: Origin,
    *,
    send_forwarded: bool,
    has_body: bool,
    websocket: Headers | None = None,
) -> tuple[bytes, int | None]:
    """The request's head for Home Assistant, and the body's length (None: chunked or none).

    ``websocket``: the handshake fields to add (the upgrade's own key,
    version and the subprotocols offered), for an upgrade request.
    """
    check_target(method, target)
    if websocket is None:
        drop = _DROP if send_forwarded else _DROP_UNTRUSTED
    else:
        drop = _DROP_WS if send_forwarded else _DROP_WS_UNTRUSTED
    # One pass over the fields, one join and one encode: this runs for every request.
    kept = [f"{name}: {value}\r\n" for name, value in headers if name not in drop]
    lengths: list[str] = []
    if len(kept) != len(headers):  # something dropped: was it framing or Connection?
        for name, _ in headers:
            if name == "connection":
                # Fields it names are hop-by-hop too (the relay drops them already).
                listed = connection_tokens(v for n, v in headers if n == "connection")
                return request_head(
                    method,
                    target,
                    [(n, v) for n, v in headers if n not in listed and n != "connection"],
                    origin,
                    send_forwarded=send_forwarded,
                    has_body=has_body,
                    websocket=websocket,
                )
        lengths = [value for name, value in headers if name == "content-length"]
    length = _content_length(lengths) if lengths else None
    if websocket is not None:
        kept += [f"{name}: {value}\r\n" for name, value in websocket]
    elif has_body:
        kept.append(
            "transfer-encoding: chunked\r\n" if length is None else f"content-length: {length}\r\n"
        )
    elif length is not None:
        if length:
            raise RequestRefused("content-length without a body")
        kept.append("content-length: 0\r\n")
    text = f"{method} {target} HTTP/1.1\r\nhost: {origin.host_header}\r\n{''.join(kept)}\r\n"
    try:
        head = text.encode("latin-1")
    except UnicodeEncodeError:
        raise RequestRefused("header field is not latin-1") from None
    _check_lines(head, len(kept) + 3)  # the request line, host, the fields, the blank line
    return head, length if has_body else None


def _content_length(values: list[str]) -> int:
    if any(v != values[0] for v in values) or not values[0].isdigit() or not values[0].isascii():
        raise RequestRefused("invalid content-length")
    return int(values[0])


def _check_lines(head: bytes, lines: int) -> None:
    """Exactly the CRLFs that end the lines we wrote, no other CR or LF, no NUL.

    The tunnel's head decoder already refuses such fields; one that slipped
    through would otherwise add a header or split the request in two
    (smuggling).  Two C-level passes over the head, not a check per field: if
    the CRs, LFs and NULs together are exactly the bytes of ``lines`` CRLF
    pairs, there is no other one.
    """
    stray = len(head) - len(head.translate(None, _CR_LF_NUL)) - 2 * lines
    if stray or head.count(b"\r\n") != lines:
        raise RequestRefused("control characters in the request head")


def response_fields(raw: RawHeaders, origin: Origin) -> tuple[list[bytes], list[bytes]]:
    """Home Assistant's response fields that may go back through the tunnel.

    As bytes, names lower-cased: the tunnel's block is made from them as they
    are (``ResponseHead.from_fields``), and checked whole when it is encoded.
    """
    names: list[bytes] = []
    values: list[bytes] = []
    listed: frozenset[str] | None = None
    drop = _RESPONSE_DROP
    for name, value in raw:
        lname = name.lower()
        if lname in drop:
            if lname == b"connection":
                listed = (listed or frozenset()) | connection_tokens([value.decode("latin-1")])
            continue
        if lname == b"location":
            value = origin.public_location(value.decode("latin-1")).encode("latin-1")
        names.append(lname)
        values.append(value)
    if listed:
        hop = {token.encode("latin-1") for token in listed}
        kept = [i for i, name in enumerate(names) if name not in hop]
        names = [names[i] for i in kept]
        values = [values[i] for i in kept]
    return names, values


def websocket_fields(key: str, protocols: list[str]) -> Headers:
    """The upgrade's own handshake fields (see ``websocket.py``)."""
    fields = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", key),
    ]
    if protocols:
        fields.append(("sec-websocket-protocol", ", ".join(protocols)))
    return fields
