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
    blocks, keepers = [], []
    for _ in range(2000):  # ~128 MiB, each block with a small live one after it
        blocks.append(ctypes.create_string_buffer(64 * 1024 - 64))
        keepers.append(ctypes.create_string_buffer(2048))
    del blocks
    before = _rss_kib()
    assert memory.trim()
    after = _rss_kib()
    assert before - after > 64 * 1024, (before, after)  # more than half of it came back
    del keepers


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


@pytest.mark.skipif(memory.malloc_trim is None, reason="not glibc")
def test_large_blocks_stay_mmapped_after_one_was_freed() -> None:
    """glibc raises its mmap threshold after a large block is freed, unless it is fixed."""
    assert memory.configure_allocator()
    first = ctypes.create_string_buffer(256 * 1024)
    del first  # without a fixed threshold, glibc would now heap-allocate 256 KiB blocks
    blocks, keepers = [], []
    for _ in range(256):  # 64 MiB, each block with a small live one after it
        blocks.append(ctypes.create_string_buffer(256 * 1024))
        keepers.append(ctypes.create_string_buffer(2048))
    before = _rss_kib()
    del blocks  # mmap'ed: unmapped at once, whatever lives around them (0 KiB otherwise)
    after = _rss_kib()
    assert before - after > 48 * 1024, (before, after)
    del keepers
