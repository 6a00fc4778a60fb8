"""gateway.memory: freed heap pages go back to the system (glibc's malloc_trim)."""

from __future__ import annotations

from gateway.memory import release_free_heap


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


def test_freed_heap_below_a_live_block_is_returned() -> None:
    """64 MiB in 8 KiB blocks (malloc's heap, not Python's small-object arenas), all freed
    but the last: glibc keeps those pages (a live block sits above them) until trimmed."""
    blocks = [bytearray(8192) for _ in range(8192)]
    keep = blocks[-1]
    del blocks
    before = rss_anon()
    assert release_free_heap()
    after = rss_anon()
    assert len(keep) == 8192
    assert before - after > 32 * 1024**2, (before, after)
