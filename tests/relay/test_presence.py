"""The presence recorder: a reconnect storm is a few transactions, and a failed write is kept."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import OperationalError

from homeport.relay.presence import PresenceRecorder


class Store:
    """What the database would hold, and what each transaction carried."""

    def __init__(self) -> None:
        self.up: dict[str, datetime] = {}
        self.down: dict[str, datetime] = {}
        self.transactions: list[tuple[dict[str, datetime], dict[str, datetime]]] = []
        self.failing = False

    async def write(
        self, connected: Mapping[str, datetime], disconnected: Mapping[str, datetime]
    ) -> None:
        await asyncio.sleep(0.01)  # a real transaction takes time: more arrive meanwhile
        if self.failing:
            raise OperationalError("UPDATE instances", {}, Exception("database is locked"))
        self.transactions.append((dict(connected), dict(disconnected)))
        self.up.update(connected)
        self.down.update(disconnected)


class Ticks:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


async def settled(recorder: PresenceRecorder, seconds: float = 5) -> None:
    async with asyncio.timeout(seconds):
        while recorder.pending:
            await asyncio.sleep(0.01)


async def test_a_storm_of_connects_is_a_few_transactions() -> None:
    store = Store()
    recorder = PresenceRecorder(store.write, delay=0.05, clock=Ticks())
    for n in range(2000):
        recorder.connected(f"home-{n}")
        if n % 500 == 0:
            await asyncio.sleep(0)  # they arrive while a batch is being written
    await settled(recorder)
    assert len(store.up) == 2000
    assert 1 <= len(store.transactions) <= 3
    await recorder.close()


async def test_the_latest_time_of_each_direction_is_written() -> None:
    store = Store()
    recorder = PresenceRecorder(store.write, delay=0.05, clock=Ticks())
    recorder.connected("a")
    recorder.disconnected("a")
    recorder.connected("b")
    recorder.connected("b")  # a reconnect within the batch: the later time
    await settled(recorder)
    assert store.down["a"] > store.up["a"]  # "a" reads as disconnected
    assert "b" not in store.down
    (only,) = store.transactions
    assert set(only[0]) == {"a", "b"}


async def test_a_failed_write_is_kept_and_retried_and_newer_times_win() -> None:
    store = Store()
    ticks = Ticks()
    recorder = PresenceRecorder(store.write, delay=0.02, clock=ticks)
    store.failing = True
    recorder.connected("a")
    recorder.connected("b")
    async with asyncio.timeout(5):
        while not recorder._failures:
            await asyncio.sleep(0.005)
    assert recorder.pending == 2  # nothing lost
    recorder.disconnected("a")  # arrives while the database is down
    later = ticks.now
    store.failing = False
    await settled(recorder, seconds=10)  # the retry waits a little longer each time
    assert set(store.up) == {"a", "b"}
    assert store.down["a"] == later
    assert store.down["a"] > store.up["a"]
    await recorder.close()


async def test_close_writes_what_is_pending_at_once() -> None:
    store = Store()
    recorder = PresenceRecorder(store.write, delay=60, clock=Ticks())
    recorder.disconnected("a")
    async with asyncio.timeout(2):  # not the 60 s batch delay
        await recorder.close()
    assert "a" in store.down
    assert recorder.pending == 0


async def test_close_gives_up_on_a_database_that_is_down() -> None:
    store = Store()
    store.failing = True
    recorder = PresenceRecorder(store.write, delay=60, clock=Ticks())
    recorder.connected("a")
    async with asyncio.timeout(2):
        await recorder.close()  # one try, then stop: shutdown is not held up
    assert recorder.pending == 1
    assert store.transactions == []


@pytest.mark.parametrize("failing_first", [False, True])
async def test_memory_is_bounded_by_homes_not_by_churn(failing_first: bool) -> None:
    store = Store()
    store.failing = failing_first
    recorder = PresenceRecorder(store.write, delay=0.05, clock=Ticks())
    for _ in range(200):  # every home flaps many times while writes fail or wait
        for n in range(10):
            recorder.connected(f"home-{n}")
            recorder.disconnected(f"home-{n}")
        assert recorder.pending <= 40  # 10 homes x 2 directions, waiting and being written
        await asyncio.sleep(0)
    store.failing = False
    await settled(recorder, seconds=10)
    assert set(store.down) == {f"home-{n}" for n in range(10)}
    await recorder.close()
