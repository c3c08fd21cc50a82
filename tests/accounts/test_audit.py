"""The audit log: recording, visibility per account and per home, paging, purge, CSV."""

from __future__ import annotations

import csv
import io
import logging
from datetime import timedelta

import pytest
from accounts_support import Clock, link

from homeport.accounts import Accounts, User
from homeport.accounts.audit import (
    RETENTION,
    EventType,
    describe_event,
    register_event_type,
    to_csv,
)

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"


async def test_record_and_read_back(accounts: Accounts, alice: User, clock: Clock) -> None:
    await accounts.audit.record(
        EventType.SIGNIN_SUCCEEDED,
        user_id=alice.id,
        ip="2001:db8:1:2:3:4:5:6",
        user_agent=FIREFOX,
        factor="password",
    )
    (event,), more = await accounts.audit.page(alice.id)
    assert not more
    assert event.kind == "signin.succeeded"
    assert event.at == clock.now
    assert event.device == "Firefox on Linux"  # a summary, never the raw User-Agent
    assert event.ip == "2001:db8:1:2:3:4:5:6"
    assert event.factor == "password"
    assert describe_event(event.kind) == "Signed in"


async def test_owner_sees_events_on_their_home_members_see_only_their_own(
    accounts: Accounts, alice: User, bob: User
) -> None:
    instance_id = await link(accounts, alice)  # records "instance.linked" for alice
    await accounts.add_member(instance_id, bob.id)
    await accounts.audit.record(EventType.SESSION_CREATED, user_id=bob.id, instance_id=instance_id)
    await accounts.audit.record(EventType.SIGNIN_FAILED, user_id=bob.id)
    alice_kinds = [e.kind for e in (await accounts.audit.page(alice.id))[0]]
    bob_kinds = [e.kind for e in (await accounts.audit.page(bob.id))[0]]
    assert "session.created" in alice_kinds  # bob on alice's home
    assert "signin.failed" not in alice_kinds  # bob's own account business
    assert "instance.linked" not in bob_kinds
    assert set(bob_kinds) == {"session.created", "signin.failed", "instance.member_added"}
    on_home = [e.kind for e in await accounts.audit.for_instance(instance_id)]
    assert on_home[0] == "session.created"
    only_home, _ = await accounts.audit.page(alice.id, instance_id=instance_id)
    assert {e.kind for e in only_home} == {
        "session.created",
        "instance.linked",
        "instance.member_added",
    }
    # A member may not filter by a home it does not own: nothing, not the owner's log.
    assert (await accounts.audit.page(bob.id, instance_id=instance_id))[0] == []


async def test_paging_newest_first(accounts: Accounts, alice: User, clock: Clock) -> None:
    for n in range(7):
        clock.advance(seconds=1)
        await accounts.audit.record(EventType.SIGNIN_FAILED, user_id=alice.id, detail=str(n))
    first, more = await accounts.audit.page(alice.id, per_page=3)
    assert [e.detail for e in first] == ["6", "5", "4"]
    assert more
    last, more = await accounts.audit.page(alice.id, page=2, per_page=3)
    assert [e.detail for e in last] == ["0"]
    assert not more


async def test_purge_keeps_180_days(accounts: Accounts, alice: User, clock: Clock) -> None:
    await accounts.audit.record(EventType.SIGNIN_FAILED, user_id=alice.id)
    clock.advance(days=100)
    await accounts.audit.record(EventType.SIGNIN_SUCCEEDED, user_id=alice.id)
    clock.advance(days=80, seconds=1)
    assert timedelta(days=180) == RETENTION
    assert await accounts.audit.purge() == 1
    (left,), _ = await accounts.audit.page(alice.id)
    assert left.kind == "signin.succeeded"


async def test_unknown_event_types_are_refused_until_registered(
    accounts: Accounts, alice: User
) -> None:
    with pytest.raises(ValueError, match="unknown audit event type"):
        await accounts.audit.record("made.up", user_id=alice.id)
    with pytest.raises(ValueError, match=r"area\.what"):
        register_event_type("Bad Name", "x")
    register_event_type("test_feature.happened", "Something happened")
    await accounts.audit.record("test_feature.happened", user_id=alice.id)
    (event,), _ = await accounts.audit.page(alice.id)
    assert describe_event(event.kind) == "Something happened"


async def test_control_characters_are_neutralised(accounts: Accounts, alice: User) -> None:
    await accounts.audit.record(
        EventType.SIGNIN_FAILED, user_id=alice.id, ip="1.2.3.4\r\nX: y", detail="a\x1bb"
    )
    (event,), _ = await accounts.audit.page(alice.id)
    assert event.ip == "1.2.3.4??X: y"
    assert event.detail == "a?b"


async def test_csv_escapes_quotes_and_defuses_formulas(
    accounts: Accounts, alice: User, clock: Clock
) -> None:
    instance_id = await link(accounts, alice)
    evil_names = {instance_id: '=HYPERLINK("http://evil","x"), "quoted"'}
    await accounts.audit.record(
        EventType.SESSION_CREATED, user_id=alice.id, instance_id=instance_id, ip="@1.2.3.4"
    )
    for start in ("+", "-"):
        await accounts.audit.record(EventType.SIGNIN_FAILED, user_id=alice.id, detail=start + "1")
    text = to_csv(await accounts.audit.export(alice.id), evil_names)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:3] == ["time_utc", "event", "type"]
    cells = [cell for row in rows[1:] for cell in row]
    assert '\'=HYPERLINK("http://evil","x"), "quoted"' in cells  # round-trips, defused
    assert "'@1.2.3.4" in cells
    assert {"'+1", "'-1"} <= set(cells)
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in cells)


async def test_every_event_is_a_structured_log_line_without_secrets(
    accounts: Accounts, alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    secret_ua = "Mozilla/5.0 token=SECRET123"
    with caplog.at_level(logging.INFO, logger="homeport.accounts.audit"):
        await accounts.audit.record(
            EventType.PASSWORD_CHANGED, user_id=alice.id, ip="10.0.0.1", user_agent=secret_ua
        )
    (record,) = [r for r in caplog.records if r.name == "homeport.accounts.audit"]
    assert record.getMessage() == "audit.password.changed"
    assert vars(record)["user"] == alice.id
    assert vars(record)["ip"] == "10.0.0.1"
    assert "SECRET123" not in repr(vars(record))
