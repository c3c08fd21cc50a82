"""The registry of open tenant exchanges that withdrawn access cuts (homeport.relay.live)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from homeport.relay.live import Ending, LiveTraffic, Principal


def session(session_id: int, user_id: int) -> Principal:
    return Principal(user_id=user_id, session_id=session_id)


def note(cut: list[tuple[str, Ending]], name: str) -> Callable[[Ending], None]:
    return lambda why: cut.append((name, why))


def test_end_sessions_cuts_only_those_sessions() -> None:
    live = LiveTraffic()
    cut: list[tuple[str, Ending]] = []
    with (
        live.track("home-a", "http", note(cut, "1-http"), session(1, 10)),
        live.track("home-a", "websocket", note(cut, "1-ws"), session(1, 10)),
        live.track("home-a", "websocket", note(cut, "2-ws"), session(2, 20)),
        live.track("home-a", "websocket", note(cut, "phone"), Principal(app_link_id=5)),
    ):
        assert live.session_ids() == {1, 2}
        assert live.count() == 4
        assert live.end_sessions([1, 99]) == 2
        assert sorted(cut) == [("1-http", Ending.SESSION_ENDED), ("1-ws", Ending.SESSION_ENDED)]
        assert live.session_ids() == {2}
        assert live.end_sessions([1]) == 0  # each exchange is cut once
    assert live.count() == 0  # leaving the blocks unregisters, even after a cut


def test_end_user_by_instance_and_except_one_session() -> None:
    live = LiveTraffic()
    cut: list[tuple[str, Ending]] = []
    with (
        live.track("home-a", "http", note(cut, "1"), session(1, 10)),
        live.track("home-b", "http", note(cut, "2"), session(2, 10)),
        live.track("home-b", "http", note(cut, "3"), session(3, 10)),
        live.track("home-b", "http", note(cut, "4"), session(4, 20)),
    ):
        live.end_user(10, instance_id="home-b", except_session_id=3)
        assert cut == [("2", Ending.SESSION_ENDED)]
        live.end_user(10, why=Ending.ACCESS_WITHDRAWN)
        assert sorted(name for name, _ in cut) == ["1", "2", "3"]
        assert cut[-1][1] is Ending.ACCESS_WITHDRAWN
        assert live.session_ids() == {4}


def test_app_links_and_whole_homes() -> None:
    live = LiveTraffic()
    cut: list[tuple[str, Ending]] = []
    with (
        live.track("home-a", "websocket", note(cut, "phone"), Principal(app_link_id=5)),
        live.track("home-a", "websocket", note(cut, "tablet"), Principal(app_link_id=6)),
        live.track("home-a", "http", note(cut, "owner"), session(1, 10)),
        live.track("home-b", "http", note(cut, "other home"), session(2, 10)),
    ):
        assert live.end_app_link(7) == 0
        assert live.end_app_link(5) == 1
        assert cut == [("phone", Ending.ACCESS_WITHDRAWN)]
        assert live.count(instance_id="home-a") == 2
        assert live.end_instance("home-a") == 2  # unlinking cuts everything on it
        assert {name for name, _ in cut} == {"phone", "tablet", "owner"}
        assert live.count(instance_id="home-b") == 1
    assert (Ending.SESSION_ENDED.code, Ending.SESSION_ENDED.reason) == (4001, "session ended")
    assert (Ending.ACCESS_WITHDRAWN.code, Ending.ACCESS_WITHDRAWN.reason) == (
        1008,
        "access withdrawn",
    )


def test_one_failing_cut_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    live = LiveTraffic()
    cut: list[tuple[str, Ending]] = []

    def broken(why: Ending) -> None:
        raise RuntimeError("transport already gone")

    with (
        caplog.at_level(logging.ERROR),
        live.track("home-a", "http", broken, session(1, 10)),
        live.track("home-a", "websocket", note(cut, "ws"), session(1, 10)),
    ):
        assert live.end_sessions([1]) == 2
    assert cut == [("ws", Ending.SESSION_ENDED)]
    assert "relay.live_traffic_end_failed" in caplog.text


def test_end_integrations_cuts_only_those_kinds_on_that_home() -> None:
    live = LiveTraffic()
    cut: list[tuple[str, Ending]] = []
    with (
        live.track("home-a", "http", note(cut, "hook-a"), Principal(integration="webhook")),
        live.track("home-a", "http", note(cut, "token-a"), Principal(integration="auth_token")),
        live.track("home-b", "http", note(cut, "hook-b"), Principal(integration="webhook")),
        live.track("home-a", "http", note(cut, "person"), session(1, 10)),
        live.track("home-a", "http", note(cut, "phone"), Principal(app_link_id=5)),
    ):
        assert live.end_integrations("home-a", ["webhook"]) == 1
        assert cut == [("hook-a", Ending.ACCESS_WITHDRAWN)]
        assert live.end_integrations("home-a", []) == 0
        assert live.end_instance("home-a") == 3  # unlinking: everything, calls included
        assert live.count(instance_id="home-b") == 1
