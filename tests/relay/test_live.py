"""The registry of open tenant exchanges that revocation cuts (homeport.relay.live)."""

from __future__ import annotations

import logging

import pytest

from homeport.relay.live import LiveTraffic


def test_end_sessions_cuts_only_those_sessions() -> None:
    live = LiveTraffic()
    cut: list[str] = []
    with (
        live.track(1, 10, "home-a", "http", lambda: cut.append("1-http")),
        live.track(1, 10, "home-a", "websocket", lambda: cut.append("1-ws")),
        live.track(2, 20, "home-a", "websocket", lambda: cut.append("2-ws")),
    ):
        assert live.session_ids() == {1, 2}
        assert live.count() == 3
        assert live.end_sessions([1, 99]) == 2
        assert sorted(cut) == ["1-http", "1-ws"]
        assert live.session_ids() == {2}
        assert live.end_sessions([1]) == 0  # idempotent
    assert live.count() == 0  # leaving the blocks unregisters, even after a cut


def test_end_user_by_instance_and_except_one_session() -> None:
    live = LiveTraffic()
    cut: list[int] = []
    with (
        live.track(1, 10, "home-a", "http", lambda: cut.append(1)),
        live.track(2, 10, "home-b", "http", lambda: cut.append(2)),
        live.track(3, 10, "home-b", "http", lambda: cut.append(3)),
        live.track(4, 20, "home-b", "http", lambda: cut.append(4)),
    ):
        live.end_user(10, instance_id="home-b", except_session_id=3)
        assert cut == [2]
        live.end_user(10)
        assert sorted(cut) == [1, 2, 3]
        assert live.session_ids() == {4}


def test_one_failing_cut_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    live = LiveTraffic()
    cut: list[str] = []

    def broken() -> None:
        raise RuntimeError("transport already gone")

    with (
        caplog.at_level(logging.ERROR),
        live.track(1, 10, "home-a", "http", broken),
        live.track(1, 10, "home-a", "websocket", lambda: cut.append("ws")),
    ):
        assert live.end_sessions([1]) == 2
    assert cut == ["ws"]
    assert "relay.live_traffic_end_failed" in caplog.text
