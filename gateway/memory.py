"""Handing the heap's free pages back to the system once the gateway runs.

Start-up is the gateway's memory peak: ~400 modules are imported, the config is parsed
event by event and validated into models, every driver and sink is built. Most of what
that allocates is freed again, but glibc's malloc returns only the top of its heap to
the system by itself; freed blocks below a live one stay in the process's RSS. One
``malloc_trim(0)`` after start-up (and after a reload) gives those pages back: about
1 MiB of a 45 MiB gateway on the 100-meter Modbus workload (docs/benchmarks.md). With
another C library (musl) there is no ``malloc_trim`` and nothing is done.
"""

from __future__ import annotations

import ctypes
import gc
import logging

log = logging.getLogger("iotgw.memory")


def release_free_heap() -> bool:
    """Collect garbage, then return free heap pages to the system; False if the C
    library has no ``malloc_trim``."""
    gc.collect()
    try:
        trim = ctypes.CDLL(None).malloc_trim  # this process's own C library
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True
