"""Abuse control (R-RATE-01/02): growing delays, per-network limits, pruning, persistence."""

from __future__ import annotations

from datetime import timedelta

import pytest
from accounts_support import Clock
from sqlalchemy import func, select

from homeport.accounts import Accounts, Database
from homeport.accounts.models import ThrottleEntry
from homeport.accounts.throttle import (
    LINK_NETWORK,
    SIGNIN_ACCOUNT,
    SIGNIN_PAIR,
    Backoff,
    Throttle,
    account_key,
    network_key,
    retry_after,
    signin_keys,
)


def test_network_key_groups_ipv6_by_64_and_keeps_ipv4_addresses() -> None:
    assert network_key("192.0.2.7") == "192.0.2.7"
    assert network_key("192.0.2.8") == "192.0.2.8"
    assert network_key("2001:db8:1:2::1") == network_key("2001:db8:1:2:ffff:1:2:3")
    assert network_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert network_key("2001:db8:1:3::1") != network_key("2001:db8:1:2::1")
    assert network_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert network_key("fe80::1%eth0") == "fe80::/64"
    assert network_key("not an address") == network_key(None) == "unknown"


def test_account_key_is_a_hash_of_the_normalised_address() -> None:
    assert account_key(" Alice@Example.COM ") == account_key("alice@example.com")
    assert "alice" not in account_key("alice@example.com")
    assert len(account_key("x")) == 64


def test_backoff_schedule_grows_from_the_fifth_failure_and_is_capped() -> None:
    delays = [SIGNIN_PAIR.delay(n) for n in range(1, 17)]
    assert delays[:4] == [0, 0, 0, 0]
    assert delays[4:10] == [1, 2, 4, 8, 16, 32]
    assert SIGNIN_PAIR.delay(15) == 900
    assert SIGNIN_PAIR.delay(10_000) == 900
    assert SIGNIN_ACCOUNT.delay(19) == 0
    assert SIGNIN_ACCOUNT.delay(20) == 1
    assert SIGNIN_ACCOUNT.delay(1000) == 60
    assert retry_after(0.01) == "1"
    assert retry_after(2.2) == "3"


async def test_delays_grow_and_refused_attempts_do_not_count(
    accounts: Accounts, clock: Clock
) -> None:
    keys = [("t:pair", Backoff(free=4, base=1.0, cap=900.0))]
    throttle = accounts.throttle
    for _ in range(4):
        assert await throttle.attempt(keys) == 0
    # The 5th failure is allowed; from then on each attempt must wait longer.
    assert await throttle.attempt(keys) == 0
    seen = []
    for _ in range(6):
        wait = await throttle.attempt(keys)
        assert wait > 0
        # Hammering while the delay runs is refused and changes nothing.
        assert await throttle.attempt(keys) == pytest.approx(wait)
        seen.append(wait)
        clock.advance(seconds=wait)
        assert await throttle.attempt(keys) == 0
    assert seen == [1, 2, 4, 8, 16, 32]


async def test_success_resets_only_its_own_network(accounts: Accounts) -> None:
    here = signin_keys("alice@example.com", "192.0.2.1")
    there = signin_keys("alice@example.com", "198.51.100.9")
    for _ in range(5):
        assert await accounts.throttle.attempt(there) == 0
    assert await accounts.throttle.attempt(there) > 0  # the attacker's network waits
    # The owner on another network is not delayed by the attacker's failures...
    assert await accounts.throttle.attempt(here) == 0
    # ...and their success clears their pair and the account, not the attacker's pair.
    await accounts.throttle.succeeded(
        clear=[here[0][0], here[1][0]],
        refund=[here[2][0]],
    )
    assert await accounts.throttle.attempt(there) > 0


async def test_failures_spread_over_networks_slow_the_account_but_only_briefly(
    accounts: Accounts, clock: Clock
) -> None:
    for n in range(20):  # 20 networks, one failure each: no pair delay at all
        assert await accounts.throttle.attempt(signin_keys("bob@example.com", f"10.0.0.{n}")) == 0
    wait = await accounts.throttle.attempt(signin_keys("bob@example.com", "192.0.2.1"))
    assert 0 < wait <= 60
    # Capped: never more than a minute, however long it goes on.
    for n in range(30):  # a new network each time: only the account-wide delay applies
        clock.advance(seconds=61)
        assert await accounts.throttle.attempt(signin_keys("bob@example.com", f"10.1.{n}.1")) == 0
    clock.advance(seconds=61)
    assert await accounts.throttle.attempt(signin_keys("bob@example.com", "192.0.2.1")) == 0


async def test_one_network_is_limited_across_accounts(accounts: Accounts, clock: Clock) -> None:
    net = "2001:db8:aa:bb::1"
    for n in range(20):  # password spraying: one try per account
        assert await accounts.throttle.attempt(signin_keys(f"user{n}@example.com", net)) == 0
    # Another address in the same /64 is the same network.
    wait = await accounts.throttle.attempt(signin_keys("new@example.com", "2001:db8:aa:bb::99"))
    assert 0 < wait <= 600
    # Another network is not affected.
    assert await accounts.throttle.attempt(signin_keys("new@example.com", "2001:db8:aa:cc::1")) == 0
    clock.advance(seconds=wait)
    assert await accounts.throttle.attempt(signin_keys("new@example.com", net)) == 0


async def test_link_code_limit_is_ten_an_hour(accounts: Accounts, clock: Clock) -> None:
    key = [("link:net:192.0.2.1", LINK_NETWORK)]
    for _ in range(10):
        assert await accounts.throttle.attempt(key) == 0
    assert await accounts.throttle.attempt(key) > 0
    clock.advance(minutes=60)
    assert await accounts.throttle.attempt(key) == 0


async def test_state_is_in_the_database_and_survives_a_new_service(
    db: Database, clock: Clock
) -> None:
    keys = signin_keys("carol@example.com", "192.0.2.5")
    first = Throttle(db, now=clock)
    for _ in range(5):
        assert await first.attempt(keys) == 0
    # A restarted relay (a new service object on the same database) still waits.
    assert await Accounts(db, now=clock).throttle.attempt(keys) > 0
    async with db.session() as s:
        stored = list(await s.scalars(select(ThrottleEntry.key)))
    assert all("carol" not in key for key in stored)


async def test_old_rows_are_pruned(accounts: Accounts, db: Database, clock: Clock) -> None:
    await accounts.throttle.attempt(signin_keys("dave@example.com", "192.0.2.6"))
    for _ in range(15):  # a long delay still running must not be pruned early
        clock.advance(minutes=16)
        await accounts.throttle.attempt(signin_keys("eve@example.com", "192.0.2.7"))

    async def count() -> int:
        async with db.session() as s:
            return int(await s.scalar(select(func.count()).select_from(ThrottleEntry)) or 0)

    before = await count()
    assert before == 6
    clock.advance(hours=23)
    assert await accounts.purge_expired() >= 3  # dave's three rows are a day old
    assert await count() == 3
    clock.advance(days=2)
    assert await accounts.throttle.prune(timedelta(days=1)) == 3
    assert await count() == 0
