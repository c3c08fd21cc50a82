"""Timed waits and stops that never lose a cancellation (``homeport/waits.py``)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from homeport.waits import cancel_and_wait, wait_for_event

pytestmark = pytest.mark.timeout(30)


async def test_it_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert not await wait_for_event(event, 0.01)
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_for_event(event, 5)


@pytest.mark.parametrize("turns", range(5))
async def test_a_loop_cancelled_just_after_its_wake_stops(turns: int) -> None:
    """The race of Python 3.11's ``asyncio.wait_for`` (CPython gh-86296): the event is
    set, then the waiting loop's task is cancelled before (or as) it resumes.  With
    ``wait_for`` the cancellation was swallowed for the first few turns and the loop
    went round for ever; it must stop at every turn."""
    event = asyncio.Event()
    rounds = 0

    async def background() -> None:
        nonlocal rounds
        while True:
            await wait_for_event(event, 10)
            event.clear()
            rounds += 1

    task = asyncio.create_task(background())
    for _ in range(2):
        await asyncio.sleep(0)  # the loop now waits for the event
    event.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    if not done:  # leave nothing running behind a failure
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task in done
    assert task.cancelled()
    assert rounds <= 1


async def test_a_task_that_loses_its_cancellation_is_still_stopped() -> None:
    """As a library's own timeout might: the first cancellation becomes a
    TimeoutError its caller retries on.  One ``cancel()`` would leave it running."""
    rounds = 0

    async def retrying() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if rounds == 1:
                    continue  # lost: swallowed, and round again
                raise

    task = asyncio.create_task(retrying())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait(task, every=0.05)
    assert task.cancelled()
    assert rounds == 2


async def test_what_a_stopped_task_raised_is_not_hidden() -> None:
    async def failing() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("broke while stopping") from None

    task = asyncio.create_task(failing())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="broke while stopping"):
        await cancel_and_wait(task)
