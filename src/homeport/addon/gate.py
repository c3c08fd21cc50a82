"""The remote-access switch and the record of recent remote accesses.

Threats this stops:

* An owner who wants remote access *off now* (a lost phone, a shared account
  they regret) must not have to find the relay's account site or stop the
  add-on: the switch in the ingress panel refuses every tunnel stream with a
  503 page and, at the moment it is flipped, cuts the streams and WebSockets
  already open.  The tunnel itself stays up, so switching back on is instant.
  The choice is persisted in the state dir: a restart never silently turns
  remote access back on.
* The panel's list of recent accesses must not become a log of what people
  did: it keeps metadata only, in memory, in a bounded ring buffer — time,
  method, a coarse *route family* (never a query string, never path segments
  that may be secrets such as webhook ids or entity names), status, and the
  remote address the relay reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple, Protocol

from homeport.protocol import ErrorCode, ResponseHead
from homeport.tunnel.stream import Stream, StreamClosed

log = logging.getLogger(__name__)

#: How many recent accesses the panel shows.
ACCESS_LOG_SIZE = 50
STATE_FILE = "remote-access.json"
#: WebSocket close sent to people whose open WebSocket is cut by the switch.
SWITCHED_OFF_CLOSE = 1008
SWITCHED_OFF_TEXT = "Remote access is switched off in the add-on"
#: How long a cut WebSocket may take to answer our close before it is reset.
CLOSE_WAIT = 5.0

#: Route families shown as they are; everything else is cut to its first segment.
_KNOWN = ("/api/websocket", "/auth/token", "/auth/authorize", "/auth/login_flow", "/api/webhook")
_KNOWN_SET = frozenset(_KNOWN)
_KNOWN_ROOTS = ("/api/", "/auth/")

#: The answer to every remote request while the switch is off: plain words, styled inline
#: (the relay serves nothing of its own here), light and dark, readable on a phone.
_OFF_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Remote access is switched off \xc2\xb7 Homeport</title>
<style>
:root{color-scheme:light dark;--fg:#1b1f24;--bg:#f4f6f8;--card:#fff;--line:#c9d0d8;
--link:#075985;--bar:#0c3b5a}
@media (prefers-color-scheme:dark){:root{--fg:#e7eaee;--bg:#101317;--card:#1b2027;
--line:#3b444f;--link:#8fd1f7;--bar:#0d2535}}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header{background:var(--bar);color:#fff;padding:.7rem 1rem;font-weight:700}
main{max-width:40rem;margin:1.5rem auto;padding:0 1rem}
h1{font-size:1.6rem;line-height:1.25;margin:0 0 1rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:1.25rem}
a{color:var(--link)}
</style></head>
<body><header>Homeport</header><main>
<h1>Remote access is switched off</h1>
<div class="card">
<p>The owner of this home has switched remote access off in the Homeport add-on, so
Home Assistant cannot be opened from outside the home right now.</p>
<p>It can be switched on again in Home Assistant, on the Homeport add-on's page
(in the sidebar), by someone at home.</p>
<p><a href="/">Try again</a></p>
</div></main></body></html>
"""


def route_family(target: str) -> str:
    """A coarse, secret-free label for a request target.

    ``/api/webhook/<id>`` carries a credential in its path and
    ``/api/states/<entity>`` says what someone looked at; neither belongs in
    an access list.  So only a few well-known routes are named, and anything
    else is reduced to its first path segment.  (Once per request: string
    methods and one set look-up, no lists.)
    """
    path = target.partition("?")[0]
    if "#" in path:
        path = path.partition("#")[0]
    if path.startswith(_KNOWN_ROOTS):
        # A known route is "/api/<name>" or "/auth/<name>" (no "/" from index 6 on):
        # one set look-up instead of a prefix test per known route.
        cut = path.find("/", 6)
        if cut < 0:
            if path in _KNOWN_SET:
                return path
        elif path[:cut] in _KNOWN_SET:
            return path[: cut + 1] + "…"
    first, _, rest = path.lstrip("/").partition("/")
    if not first:
        return "/"
    return f"/{first[:40]}/…" if rest.strip("/") else f"/{first[:40]}"


class Access(NamedTuple):
    """One remote access, metadata only (immutable; a tuple: cheap once per request)."""

    at: float
    method: str
    route: str
    status: int | None  # None: no answer head (cut, failed or refused)
    remote: str
    websocket: bool


_GONE = object()
#: A NamedTuple's own ``__new__`` is Python code with keyword handling; this is the C
#: constructor it ends in (one entry per request).
_new_access = tuple.__new__


class AccessLog:
    """A bounded in-memory ring buffer of :class:`Access` entries (never on disk)."""

    def __init__(self, size: int = ACCESS_LOG_SIZE) -> None:
        self._entries: deque[Access] = deque(maxlen=size)
        self.total = 0

    def add(self, entry: Access) -> None:
        self._entries.append(entry)
        self.total += 1

    def recent(self) -> list[Access]:
        """Newest first."""
        return list(reversed(self._entries))


class GatedExchange(Protocol):
    """What the gate needs from an open exchange (``addon/exchange.py``, ``websocket.py``)."""

    stream: Stream

    def cut(self) -> None:
        """Remote access was switched off: end now (idempotent; see :func:`answer_off`)."""


class RemoteAccessGate:
    """The switch and the access list, for the add-on's callback exchanges.

    :meth:`admit` answers every new stream with the 503 page while the switch
    is off; an admitted exchange registers with :meth:`opened` and reports
    its end with :meth:`closed`, so that switching off can cut every open one
    at once (no task or watcher per stream: a registry of exchanges that each
    know how to stop).
    """

    def __init__(self, state_dir: Path, access_log: AccessLog | None = None) -> None:
        self._path = state_dir / STATE_FILE
        self.access_log = access_log or AccessLog()
        self._enabled = self._load()
        #: Every exchange serving a stream now, so the switch can cut it at once.
        self._open: dict[GatedExchange, None] = {}

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def _load(self) -> bool:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            # Unreadable state: fail closed, the owner sees "off" and can switch it on.
            log.warning("addon.remote_access_state_unreadable")
            return False
        return not (isinstance(data, dict) and data.get("enabled") is False)

    def set_enabled(self, enabled: bool) -> None:
        """Persist first, then act: a crash right after never loses the owner's choice."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"enabled": enabled}), encoding="utf-8")
        os.replace(tmp, self._path)
        changed = enabled != self._enabled
        self._enabled = enabled
        if changed:
            log.info("addon.remote_access", extra={"enabled": enabled, "cut": len(self._open)})
        if not enabled:
            for exchange in list(self._open):
                exchange.cut()  # idempotent: a second click cuts nothing twice

    def admit(self, stream: Stream) -> bool:
        """True: serve the stream.  False: switched off, answered here (Home Assistant is
        never asked), released and recorded."""
        if self._enabled:
            return True
        refuse(stream)
        self.record(stream, 503)
        return False

    def opened(self, exchange: GatedExchange) -> None:
        self._open[exchange] = None

    def closed(self, exchange: GatedExchange, status: int | None) -> None:
        """``exchange`` is over; ``status``: the answer the person got (None: none, cut)."""
        if self._open.pop(exchange, _GONE) is not _GONE:
            self.record(exchange.stream, status)

    def record(self, stream: Stream, status: int | None) -> None:
        """One entry in the access list (metadata only, see the module docstring)."""
        head = stream.request
        assert head is not None
        remote = "unknown"
        for name, value in head.headers:
            # The address the relay saw (it strips any the browser sent and writes its own).
            if name == "x-forwarded-for":
                remote = value.rpartition(",")[2].strip()[:64]
                break
        self.access_log.add(
            _new_access(
                Access,
                (
                    time.time(),
                    head.method,
                    route_family(head.target),
                    status,
                    remote,
                    stream.websocket,
                ),
            )
        )


def refuse(stream: Stream) -> None:
    """Answer the 503 page, written by us (Home Assistant is never asked); release the stream."""
    with contextlib.suppress(StreamClosed):
        _answer_off(stream)
    stream.release(ErrorCode.NO_ERROR, "switched off")


def _answer_off(stream: Stream) -> None:
    stream.respond(
        ResponseHead(
            503,
            [
                ("content-type", "text/html; charset=utf-8"),
                ("content-length", str(len(_OFF_PAGE))),
                ("cache-control", "no-store"),
                ("retry-after", "60"),
            ],
        )
    )
    stream.send_data(_OFF_PAGE, end=True)
