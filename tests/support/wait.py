"""Waiting for a condition in tests: poll until it holds, fail with what was last seen.

Tests assert on what happened, never on how long it took: ``within`` is a hang guard
only (a condition that never holds fails the test instead of hanging the suite). Both
flavours share one poll: :func:`eventually` for async tests (the event loop keeps
running while it waits), :func:`eventually_sync` for tests that drive subprocesses,
threads or servers from plain code.

A probe returns the value to test (``until`` decides; by default its truth; a probe may
return None for "not yet"), and the value is returned, so
``rows = await eventually(sink.rows, until=len)`` both waits and hands over what it
waited for. A probe that raises fails the wait at once,
unless the exception is one of ``ignore`` (a server still starting, a file not yet
written): those count as "not yet" and the last one is shown on failure.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast, overload

T = TypeVar("T")

WITHIN = 30.0
"""Default hang guard (seconds)."""

What = str | Callable[[], str] | None
"""What is awaited, for the failure message: a text, or a function giving one when the
wait fails (the state of things at the end, not at the start)."""


class _Poll:
    """One wait: its deadline, the last value and the last ignored error."""

    def __init__(self, probe: Callable[..., Any], until: Callable[[Any], object],
                 within: float, what: What,
                 ignore: tuple[type[BaseException], ...]) -> None:
        self.probe, self.until, self.within, self.ignore = probe, until, within, ignore
        self.what = what or getattr(probe, "__qualname__", repr(probe))
        self.deadline = time.monotonic() + within
        self.last: Any = _NOTHING
        self.error: BaseException | None = None
        self.tries = 0

    def check(self, value: Any) -> bool:
        self.tries += 1
        self.last, self.error = value, None
        return bool(self.until(value))

    def failed(self, error: BaseException) -> None:
        if not isinstance(error, self.ignore):
            raise error
        self.tries += 1
        self.error = error

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def failure(self) -> AssertionError:
        last = "no value (every try raised)" if self.last is _NOTHING else repr(self.last)
        if len(last) > 2000:
            last = last[:2000] + "..."
        what = self.what() if callable(self.what) else self.what
        message = (f"{what}: not reached within {self.within:g} s "
                   f"({self.tries} tries); last value: {last}")
        if self.error is not None:
            message += f"; last error: {self.error!r}"
        return AssertionError(message)


_NOTHING = object()


@overload
async def eventually(probe: Callable[[], Awaitable[T | None]], *,
                     until: Callable[[T], object] = ..., within: float = ...,
                     every: float = ..., what: What = ...,
                     ignore: tuple[type[BaseException], ...] = ...) -> T: ...


@overload
async def eventually(probe: Callable[[], T | None], *,
                     until: Callable[[T], object] = ..., within: float = ...,
                     every: float = ..., what: What = ...,
                     ignore: tuple[type[BaseException], ...] = ...) -> T: ...


async def eventually(probe: Callable[[], Any], *,
                     until: Callable[[Any], object] = bool, within: float = WITHIN,
                     every: float = 0.02, what: What = None,
                     ignore: tuple[type[BaseException], ...] = ()) -> Any:
    """Await ``probe()`` (sync or async) every ``every`` seconds until ``until(value)``
    holds; return that value. Fails with the last value after ``within`` seconds."""
    poll = _Poll(probe, until, within, what, ignore)
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
        except Exception as exc:
            poll.failed(exc)
        else:
            if poll.check(value):
                return value
        if poll.expired():
            raise poll.failure()
        await asyncio.sleep(every)


def eventually_sync(probe: Callable[[], T | None], *, until: Callable[[T], object] = bool,
                    within: float = WITHIN, every: float = 0.05, what: What = None,
                    ignore: tuple[type[BaseException], ...] = ()) -> T:
    """:func:`eventually` for plain (non-async) tests: blocks the calling thread."""
    poll = _Poll(probe, until, within, what, ignore)
    while True:
        try:
            value = probe()
        except Exception as exc:
            poll.failed(exc)
        else:
            if poll.check(value):
                return cast(T, value)  # None fails ``until`` unless the test said otherwise
        if poll.expired():
            raise poll.failure()
        time.sleep(every)
