"""LiveStreams: withdrawing access stops exactly the streams that access opened."""

from __future__ import annotations

import pytest

from homeport.relay.live_streams import LiveStreams, Principal


def _stopper(log: list[str], name: str):
    return lambda: log.append(name)


def test_close_selects_by_principal_and_instance() -> None:
    live = LiveStreams()
    stopped: list[str] = []
    live.add("home-a", Principal(user_id=1, session_id=10), _stopper(stopped, "bob-ws"))
    live.add("home-a", Principal(user_id=1, session_id=11), _stopper(stopped, "bob-tablet"))
    live.add("home-a", Principal(user_id=2, session_id=20), _stopper(stopped, "owner"))
    live.add("home-a", Principal(app_link_id=5), _stopper(stopped, "phone"))
    live.add("home-b", Principal(user_id=1, session_id=30), _stopper(stopped, "bob-on-b"))

    assert live.close("home-a", user_id=1) == 2
    assert sorted(stopped) == ["bob-tablet", "bob-ws"]
    assert live.close("home-a", user_id=1) == 0  # each stream stops once
    assert live.close("home-a", app_link_id=6) == 0
    assert live.close("home-a", app_link_id=5) == 1
    assert live.close("home-a", session_ids=[30]) == 0  # another home's session
    assert live.close("home-b", session_ids=[30]) == 1
    assert live.count("home-a") == 1
    assert live.close("home-a", everything=True) == 1
    assert live.count("home-a") == live.count("home-b") == 0
    assert stopped[-1] == "owner"


def test_discard_and_a_failing_stop(caplog: pytest.LogCaptureFixture) -> None:
    live = LiveStreams()
    finished = live.add("home", Principal(user_id=1), lambda: None)
    live.discard(finished)  # the request ended normally
    live.discard(finished)  # twice is harmless

    def broken() -> None:
        raise RuntimeError("already gone")

    stopped: list[str] = []
    live.add("home", Principal(user_id=1), broken)
    live.add("home", Principal(user_id=1), _stopper(stopped, "second"))
    assert live.close("home", user_id=1) == 2  # one failure does not spare the others
    assert stopped == ["second"]
    assert "live_streams.stop_failed" in caplog.text
