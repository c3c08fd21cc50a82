"""Which priority class Home Assistant traffic belongs to (see docs/protocol.md §6).

The tunnel's scheduler (``homeport.protocol.scheduler``) shares a saturated
uplink between classes by weight; this module decides the class.  The relay
classifies from the request (``request_priority``, carried in the OPEN
frame), and the add-on may then move a stream to a *less* urgent class from
what Home Assistant answers (``response_priority``) or once it has sent a lot
(``sent_priority``): the request alone cannot tell a 2 KiB API answer from an
MJPEG stream or a backup.  Nothing here ever makes a stream more urgent than
the relay said, so a response cannot promote itself ahead of the home's
interactive traffic.
"""

from __future__ import annotations

import re

from homeport.protocol.heads import (
    PRIORITY_BULK,
    PRIORITY_DEFAULT,
    PRIORITY_INTERACTIVE,
)

#: Pictures: camera snapshots, entity pictures, media artwork, TTS audio.
PRIORITY_MEDIA = 5
#: A body this large (either way) is a transfer, not an interaction.
BULK_SIZE = 1024 * 1024

# One pattern, one match per request: the first group that matches is the class.
# Long or endless bodies (group 1): MJPEG and HLS camera streams, backups in and
# out.  Media (group 2).  Home Assistant's API and auth calls (group 3).
_CLASSES = re.compile(
    r"/(?:(api/(?:camera_proxy_stream/|hls/|backup/(?:download|upload)"
    r"|hassio/backups/(?:[^/]+/download|new/upload)))"
    r"|(api/(?:camera_proxy/|image_proxy/|image/serve/|media_player_proxy/|tts_proxy/))"
    r"|((?:api|auth)/))"
)
_BULK_TYPES = (b"multipart/x-mixed-replace", b"video/", b"audio/")


def request_priority(path: str, *, websocket: bool, content_length: int | None = None) -> int:
    """The class the relay puts in the OPEN frame, from the request alone.

    WebSockets (the frontend's live updates, the companion app) and Home
    Assistant's API and auth calls are interactive; camera streams, backups
    and large uploads are bulk; pages, scripts and pictures sit between.
    """
    if websocket:
        return PRIORITY_INTERACTIVE
    if content_length is not None and content_length > BULK_SIZE:
        return PRIORITY_BULK
    found = _CLASSES.match(path)
    if found is None:
        return PRIORITY_DEFAULT
    return _CLASS_OF_GROUP[found.lastindex or 0]


#: What the group that matched in _CLASSES means.
_CLASS_OF_GROUP = (PRIORITY_DEFAULT, PRIORITY_BULK, PRIORITY_MEDIA, PRIORITY_INTERACTIVE)


def response_priority(current: int, names: list[bytes], values: list[bytes]) -> int:
    """The add-on's class for sending a response: ``current`` or less urgent.

    Endless or media bodies (MJPEG's ``multipart/x-mixed-replace``, video,
    audio) and bodies announced larger than ``BULK_SIZE`` are bulk.  The
    fields are Home Assistant's, as bytes with names lower-cased.
    """
    for name, value in zip(names, values):  # noqa: B905 - as many, by construction
        if name == b"content-type" and value.strip().lower().startswith(_BULK_TYPES):
            return PRIORITY_BULK
        if name == b"content-length":
            try:
                if int(value) > BULK_SIZE:
                    return PRIORITY_BULK
            except ValueError:
                pass
    return current


def sent_priority(current: int, sent: int) -> int:
    """A body of unknown length that has passed ``BULK_SIZE`` is a transfer."""
    return PRIORITY_BULK if sent > BULK_SIZE else current
