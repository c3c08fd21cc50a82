"""How Home Assistant traffic is classed: interactive first, cameras and backups last."""

from __future__ import annotations

import pytest

from homeport.protocol.heads import PRIORITY_BULK, PRIORITY_DEFAULT, PRIORITY_INTERACTIVE
from homeport.tunnel.priorities import (
    BULK_SIZE,
    PRIORITY_MEDIA,
    request_priority,
    response_priority,
    sent_priority,
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/states", PRIORITY_INTERACTIVE),
        ("/api/services/light/turn_on", PRIORITY_INTERACTIVE),
        ("/auth/token", PRIORITY_INTERACTIVE),
        ("/api/webhook/abc123", PRIORITY_INTERACTIVE),
        ("/api/camera_proxy_stream/camera.door", PRIORITY_BULK),
        ("/api/hls/abc/master_playlist.m3u8", PRIORITY_BULK),
        ("/api/backup/download/abc", PRIORITY_BULK),
        ("/api/backup/upload", PRIORITY_BULK),
        ("/api/hassio/backups/abc/download", PRIORITY_BULK),
        ("/api/hassio/backups/new/upload", PRIORITY_BULK),
        ("/api/hassio/backups", PRIORITY_INTERACTIVE),  # the list, not a transfer
        ("/api/camera_proxy/camera.door", PRIORITY_MEDIA),
        ("/api/image_proxy/image.map", PRIORITY_MEDIA),
        ("/api/media_player_proxy/media_player.tv", PRIORITY_MEDIA),
        ("/", PRIORITY_DEFAULT),
        ("/frontend_latest/app.js", PRIORITY_DEFAULT),
        ("/apix/camera_proxy_stream/x", PRIORITY_DEFAULT),
    ],
)
def test_request_priority_by_path(path: str, expected: int) -> None:
    assert request_priority(path, websocket=False) == expected


def test_websockets_are_interactive_whatever_their_path() -> None:
    assert request_priority("/api/websocket", websocket=True) == PRIORITY_INTERACTIVE
    assert request_priority("/api/hassio_ingress/x/ws", websocket=True) == PRIORITY_INTERACTIVE


def test_a_large_upload_is_bulk() -> None:
    assert request_priority("/api/media_source/upload", websocket=False) == PRIORITY_INTERACTIVE
    big = request_priority(
        "/api/media_source/upload", websocket=False, content_length=BULK_SIZE + 1
    )
    assert big == PRIORITY_BULK
    assert request_priority("/api/x", websocket=False, content_length=BULK_SIZE) == 0


@pytest.mark.parametrize(
    "headers",
    [
        [("content-type", "multipart/x-mixed-replace;boundary=frame")],
        [("content-type", " Video/MP4")],
        [("content-type", "audio/mpeg")],
        [("content-type", "application/json"), ("content-length", str(BULK_SIZE + 1))],
    ],
)
def test_streams_media_and_large_bodies_answer_as_bulk(headers: list[tuple[str, str]]) -> None:
    assert response_priority(PRIORITY_INTERACTIVE, *_fields(headers)) == PRIORITY_BULK


@pytest.mark.parametrize(
    "headers",
    [
        [("content-type", "application/json"), ("content-length", "2048")],
        [("content-length", "not a number")],
        [],
    ],
)
def test_small_answers_keep_the_request_class(headers: list[tuple[str, str]]) -> None:
    assert response_priority(PRIORITY_INTERACTIVE, *_fields(headers)) == PRIORITY_INTERACTIVE
    assert response_priority(PRIORITY_MEDIA, *_fields(headers)) == PRIORITY_MEDIA


def test_a_response_never_makes_its_stream_more_urgent() -> None:
    for current in range(PRIORITY_BULK + 1):
        assert response_priority(current, [b"content-length"], [b"10"]) == current
        assert response_priority(current, [b"content-type"], [b"video/mp4"]) >= current
        assert sent_priority(current, 10) == current


def test_a_long_body_of_unknown_length_turns_bulk() -> None:
    assert sent_priority(PRIORITY_INTERACTIVE, BULK_SIZE) == PRIORITY_INTERACTIVE
    assert sent_priority(PRIORITY_INTERACTIVE, BULK_SIZE + 1) == PRIORITY_BULK


def _fields(headers: list[tuple[str, str]]) -> tuple[list[bytes], list[bytes]]:
    return [n.encode() for n, _ in headers], [v.encode() for _, v in headers]
