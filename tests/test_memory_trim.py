"""Freed heap memory goes back to the system (homeport.memory).

The allocator's behaviour depends on everything the process did before, so each
measurement runs in a fresh interpreter of its own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from homeport import memory

_MEASURE = textwrap.dedent(
    """
    import ctypes
    from homeport import memory

    def rss_kib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    {setup}
    blocks, keepers = [], []
    for _ in range({count}):  # each block with a small live one after it
        blocks.append(ctypes.create_string_buffer({size}))
        keepers.append(ctypes.create_string_buffer(2048))
    before = rss_kib()
    del blocks
    {after_free}
    print(before - rss_kib())
    """
)


def _returned_kib(*, size: int, count: int, setup: str = "", after_free: str = "") -> int:
    code = _MEASURE.format(size=size, count=count, setup=setup, after_free=after_free)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return int(result.stdout.strip())


@pytest.mark.skipif(memory.malloc_trim is None, reason="not glibc")
def test_trim_gives_freed_heap_pages_back() -> None:
    """Mid-size blocks freed between live ones: only a trim gives their pages back."""
    kept = _returned_kib(size=64 * 1024 - 64, count=2000)
    trimmed = _returned_kib(size=64 * 1024 - 64, count=2000, after_free="memory.trim()")
    assert kept < 16 * 1024, kept  # ~128 MiB freed, (almost) none of it returned ...
    assert trimmed > 96 * 1024, trimmed  # ... until the trim


@pytest.mark.skipif(memory.malloc_trim is None, reason="not glibc")
def test_large_blocks_stay_mmapped_after_one_was_freed() -> None:
    """glibc raises its mmap threshold after a large block is freed, unless it is fixed."""
    size = 2 * memory.MMAP_THRESHOLD
    first_freed = f"first = ctypes.create_string_buffer({size}); del first"
    count = 64 * 1024 * 1024 // size
    dynamic = _returned_kib(size=size, count=count, setup=first_freed)
    fixed = _returned_kib(
        size=size, count=count, setup="memory.configure_allocator(); " + first_freed
    )
    assert dynamic < 16 * 1024, dynamic  # 64 MiB on the heap after the first free
    assert fixed > 48 * 1024, fixed  # mmap'ed, unmapped at once


_FAULTS = textwrap.dedent(
    """
    import resource
    from homeport import memory

    {setup}
    keep = bytearray(64)
    for _ in range(50):  # warm up: the heap grows to what the loop needs
        block = b"x" * (256 * 1024)
        del block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(500):
        block = b"x" * (256 * 1024)  # a body batch, a TLS read, a tunnel write
        del block
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _page_faults(setup: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _FAULTS.format(setup=setup)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(result.stdout.strip())


@pytest.mark.skipif(memory.malloc_trim is None, reason="not glibc")
def test_data_plane_buffers_are_reused_not_mapped_each_time() -> None:
    """A 256 KiB buffer allocated and freed over and over costs no page faults.

    With the threshold at 128 KiB every one was mapped, faulted in (64 pages,
    zeroed by the kernel) and unmapped: a third of an upload's CPU.
    """
    faults = _page_faults("memory.configure_allocator()")
    assert faults < 500, faults  # 500 buffers: not even one fault each (64 each when mapped)


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
