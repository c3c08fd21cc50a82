"""Freed heap memory goes back to the system (homeport.memory)."""

from __future__ import annotations

import asyncio
import ctypes

import pytest

from homeport import memory


def _rss_kib() -> int:
    """RSS in KiB (from /proc)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(memory.malloc_trim is None, reason="not glibc")
def test_trim_gives_freed_heap_pages_back() -> None:
    """Many mid-size blocks freed but one kept at the top: without a trim the heap stays."""
    blocks = [ctypes.create_string_buffer(64 * 1024 - 64) for _ in range(2000)]  # ~128 MiB
    keeper = ctypes.create_string_buffer(64 * 1024 - 64)  # pins the top of the heap
    del blocks
    before = _rss_kib()
    assert memory.trim()
    after = _rss_kib()
    assert before - after > 64 * 1024, (before, after)  # more than half of it came back
    del keeper


async def test_the_trimmer_runs_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "malloc_trim", lambda pad: calls.append(pad) or 1)
    trimmer = memory.MemoryTrimmer(interval=0.01)
    trimmer.start()
    await asyncio.sleep(0.1)
    await trimmer.stop()
    count = len(calls)
    assert count >= 3
    assert set(calls) == {0}
    await asyncio.sleep(0.05)
    assert len(calls) == count  # stopped means stopped


async def test_nothing_runs_where_there_is_no_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "malloc_trim", None)
    assert memory.trim() is False
    trimmer = memory.MemoryTrimmer(interval=0.01)
    trimmer.start()
    assert trimmer._task is None
    await trimmer.stop()
