"""A sink's own thread for a blocking client: one call at a time, never waited for at exit.

The ``influxdb`` sink writes through influxdb-client's synchronous client (urllib3)
because its async one drags in aiohttp (~9 MiB). Its calls block, so they run here:

* **Its own thread, a daemon**, not ``asyncio.to_thread``: the default executor is
  shared with everything else that blocks, and ``concurrent.futures`` joins its threads at
  interpreter exit, so one write stuck on a dead connection would hold the gateway's exit
  past ``shutdown_timeout``. A daemon thread is abandoned at exit; what it was sending is
  still in the buffer and goes out after the next start (at least once, as always).
* **One call at a time, also across a caller that gave up**: the forwarder cancels a
  write at stop, and a sink bounds its wait for an answer; the thread cannot be
  interrupted and goes on sending. ``call`` therefore waits until the thread is idle
  before handing it the next call, so the same batch is never in flight twice at once and
  a resend never races its own first attempt. The caller bounds that wait (the sink's
  timeout) and reports a still-busy thread as the sink being unavailable.
* **Restartable**: ``stop`` lets the thread finish its current call and a last one (the
  client's cleanup), then end; a later ``call`` (the supervisor reopens a sink after a
  failure) starts a new thread, still after the old one's call has returned.

A ``SinkThread`` belongs to one event loop (the gateway has one).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any] | None, asyncio.AbstractEventLoop, "asyncio.Future[Any]"]
"""A call for the thread, the loop to answer on and the future to answer with; no call
(None) means: answer, then end the thread."""


class SinkThread:
    """A named daemon thread running one blocking call at a time for a coroutine."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job] | None = None
        self._busy: asyncio.Future[Any] | None = None
        """The call the thread runs or was last given, awaited or not: the next call waits
        for it, so one call at a time holds even after its caller gave up."""

    @property
    def busy(self) -> bool:
        """True while the thread runs a call (possibly one whose caller gave up)."""
        return self._busy is not None and not self._busy.done()

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in the thread and return its result (or raise its exception).

        Waits first until an earlier call has returned. The caller bounds the whole wait
        (``asyncio.timeout``); cancelling it never interrupts ``fn``, which runs on and is
        waited for by the next call."""
        await self.idle()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        future.add_done_callback(_retrieve)
        self._busy = future
        self._jobs_queue().put((fn, loop, future))
        return await asyncio.shield(future)

    async def idle(self) -> None:
        """Wait until the thread has no call (cancellable; does not touch the call)."""
        while self._busy is not None and not self._busy.done():
            await asyncio.wait({self._busy})

    async def stop(self, last: Callable[[], None] | None, wait: float) -> bool:
        """End the thread after its current call and ``last`` (cleanup) have run.

        Returns whether it ended within ``wait`` seconds; if not, it is left to finish on
        its own (a daemon: it does not hold up the interpreter's exit either)."""
        jobs, self._jobs = self._jobs, None
        if jobs is None:
            return True
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        ended.add_done_callback(_retrieve)
        if last is not None:
            cleanup: asyncio.Future[None] = loop.create_future()
            cleanup.add_done_callback(_retrieve)
            jobs.put((last, loop, cleanup))
        jobs.put((None, loop, ended))
        done, _pending = await asyncio.wait({ended}, timeout=wait)
        return bool(done)

    def _jobs_queue(self) -> queue.SimpleQueue[_Job]:
        if self._jobs is None:
            self._jobs = queue.SimpleQueue()
            threading.Thread(target=_serve, args=(self._jobs,), name=self.name,
                             daemon=True).start()
        return self._jobs


def _serve(jobs: queue.SimpleQueue[_Job]) -> None:
    """The thread: run each call, answer on its loop; end at the job without a call."""
    while _run(jobs.get()):
        pass


def _run(job: _Job) -> bool:
    """One job; its call, body and result are let go when it returns, not kept alive
    while the thread waits for the next."""
    fn, loop, future = job
    if fn is None:
        _answer(loop, future, None, None)
        return False
    try:
        result = fn()
    except BaseException as exc:  # handed to the caller, whatever it is
        _answer(loop, future, None, exc)
    else:
        _answer(loop, future, result, None)
    return True


def _answer(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any,
            exc: BaseException | None) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
        loop.call_soon_threadsafe(_settle, future, result, exc)


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an exception as seen: a call whose caller gave up has nobody to raise it to,
    and asyncio would log it as "never retrieved" (the next attempt reports its own)."""
    if not future.cancelled():
        future.exception()
