"""The bounded background jobs behind "Forgot password?" (``relay/site/reset.py``)."""

from __future__ import annotations

import asyncio

from homeport.relay.site.reset import BackgroundJobs


async def test_at_most_limit_jobs_run_and_the_rest_are_dropped_cleanly() -> None:
    jobs = BackgroundJobs(2)
    release = asyncio.Event()
    finished: list[int] = []

    async def job(n: int) -> None:
        await release.wait()
        finished.append(n)

    assert jobs.start(job(1))
    assert jobs.start(job(2))
    dropped = job(3)
    assert not jobs.start(dropped)
    assert dropped.cr_frame is None, "closed, so never 'never awaited'"
    assert jobs.running == 2
    release.set()
    await jobs.drain()
    assert sorted(finished) == [1, 2]
    assert jobs.running == 0
    assert jobs.start(job(4)), "room again"
    await jobs.drain()


async def test_drain_cancels_what_does_not_finish_in_time() -> None:
    jobs = BackgroundJobs(4)
    jobs.start(asyncio.sleep(60))
    await asyncio.wait_for(jobs.drain(timeout=0.1), 5)
    assert jobs.running == 0
