"""The integration allow-list (relay/integration_paths.py): exact targets, nothing that looks alike.

The property tests check the rule that matters against what Home Assistant's
server does with a target: whatever the matcher admits, aiohttp/yarl's own
normalisation (percent-decoding, dot segments) leaves unchanged, so Home
Assistant routes it to the endpoint the relay thought it was.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from homeport.relay.integration_paths import IntegrationPath, Switch, match

HOOK = "/api/webhook/homeport-hook_01"


@pytest.mark.parametrize(
    ("method", "target", "expected"),
    [
        ("POST", HOOK, IntegrationPath.WEBHOOK),
        ("PUT", HOOK, IntegrationPath.WEBHOOK),
        ("GET", HOOK, IntegrationPath.WEBHOOK),
        ("HEAD", HOOK, IntegrationPath.WEBHOOK),
        ("POST", HOOK + "?temp=21.5&unit=C", IntegrationPath.WEBHOOK),
        ("POST", "/api/alexa/smart_home", IntegrationPath.ALEXA),
        ("POST", "/api/google_assistant", IntegrationPath.GOOGLE_ASSISTANT),
        ("POST", "/auth/token", IntegrationPath.TOKEN),
    ],
)
def test_the_allowed_set(method: str, target: str, expected: IntegrationPath) -> None:
    assert match(method, target, upgrade=False) is expected


def test_each_path_belongs_to_its_switch() -> None:
    assert IntegrationPath.WEBHOOK.switch is Switch.WEBHOOKS
    for path in (IntegrationPath.ALEXA, IntegrationPath.GOOGLE_ASSISTANT, IntegrationPath.TOKEN):
        assert path.switch is Switch.VOICE


@pytest.mark.parametrize(
    "target",
    [
        # dot segments: Home Assistant would route these to /api/states
        "/api/webhook/../states",
        "/api/webhook/..",
        "/api/webhook/.",
        "/api/webhook/./x",
        "/api/webhook/x/../../states",
        "/api/google_assistant/../states",
        "/auth/token/../../api/states",
        # percent-encoded slashes, dots and letters
        "/api/webhook/x%2F..%2Fstates",
        "/api/webhook/x%2f..%2fstates",
        "/api/webhook/%2E%2E",
        "/api/webhook/%2e%2e/states",
        "/api/webhook/hook%00",
        "/api/%77ebhook/x",
        "/api/google%5Fassistant",
        "/auth/%74oken",
        # case
        "/API/webhook/x",
        "/api/Webhook/x",
        "/api/WEBHOOK/x",
        "/Auth/token",
        "/api/Google_Assistant",
        "/api/alexa/Smart_Home",
        # trailing segments, slashes, doubled slashes
        "/api/webhook/x/",
        "/api/webhook/x/y",
        "/api/webhook/",
        "/api/webhook",
        "/api/google_assistant/",
        "/api/google_assistant/x",
        "/auth/token/",
        "//api/webhook/x",
        "/api//webhook/x",
        "/api/webhook//x",
        "/api/alexa/smart_home/",
        "/api/alexa",
        # other forms of a target
        "https://h.example/api/webhook/x",
        "*",
        "",
        "api/webhook/x",
        "/api/webhook/x#frag",
        "/api/webhook/x?a=1#frag",
        "/api/webhook/x?a b",
        "/api/webhook/x;jsessionid=1",
        "/api/webhook/x\\..\\states",
        "/api/webhook/" + "a" * 129,
        # queries where Home Assistant never expects one
        "/auth/token?grant_type=refresh_token",
        "/api/google_assistant?x=1",
        "/api/alexa/smart_home?",
        # neighbours that are not on the list
        "/auth/authorize",
        "/auth/login_flow",
        "/auth/revoke",
        "/api/alexa/flash_briefings/x",
        "/api/states",
        "/api/websocket",
        "/api/webhooks/x",
        "/apiwebhook/x",
    ],
)
def test_look_alikes_do_not_match(target: str) -> None:
    for method in ("GET", "HEAD", "POST", "PUT"):
        assert match(method, target, upgrade=False) is None, (method, target)


@pytest.mark.parametrize(
    "method", ["DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "post", "Post"]
)
def test_methods_home_assistant_does_not_accept(method: str) -> None:
    assert match(method, HOOK, upgrade=False) is None
    assert match(method, "/auth/token", upgrade=False) is None


@pytest.mark.parametrize("method", ["GET", "PUT", "HEAD"])
def test_voice_paths_are_post_only(method: str) -> None:
    for target in ("/api/alexa/smart_home", "/api/google_assistant", "/auth/token"):
        assert match(method, target, upgrade=False) is None


def test_an_upgrade_never_matches() -> None:
    assert match("GET", HOOK, upgrade=True) is None
    assert match("POST", "/auth/token", upgrade=True) is None


_ID_CHARS = st.characters(codec="ascii")
_TARGETS = st.one_of(
    st.text(_ID_CHARS, max_size=40).map(lambda rest: "/api/webhook/" + rest),
    st.text(_ID_CHARS, max_size=40).map(lambda rest: "/api/" + rest),
    st.text(_ID_CHARS, max_size=40).map(lambda rest: "/auth/token" + rest),
    st.text(_ID_CHARS, max_size=60),
)


@given(st.sampled_from(["GET", "HEAD", "POST", "PUT"]), _TARGETS)
def test_whatever_matches_is_what_home_assistant_routes(method: str, target: str) -> None:
    """Anything admitted is unchanged by the server's decoding and dot-segment removal,
    starts with one of the four allowed paths, and has no extra segment."""
    kind = match(method, target, upgrade=False)
    if kind is None:
        return
    path = target.partition("?")[0]
    # The server's view: yarl decodes %-escapes (both ways) and, for a full URL,
    # also removes dot segments.
    assert URL.build(path=path, encoded=True).path == path
    assert URL("http://home.example" + path).path == path
    if kind is IntegrationPath.WEBHOOK:
        segments = path.split("/")
        assert segments[:3] == ["", "api", "webhook"]
        assert len(segments) == 4
        assert segments[3] not in ("", ".", "..")
    else:
        assert path in ("/api/alexa/smart_home", "/api/google_assistant", "/auth/token")
        assert "?" not in target


@given(st.text(max_size=80))
def test_no_percent_dot_or_backslash_in_a_matched_path(rest: str) -> None:
    target = "/api/webhook/" + rest
    if match("POST", target, upgrade=False) is not None:
        path = target.partition("?")[0]
        assert not set(path[len("/api/webhook/") :]) & set("%./\\;#")
