"""Named background tasks in one TaskGroup, each restarted with backoff when it fails.

A driver bug or a device that makes a library raise must cost that device only: its
task is logged once, restarted after a growing pause, and everything else keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from gateway.backoff import Backoff
from gateway.problems import ProblemLog

log = logging.getLogger("iotgw.supervisor")

HEALTHY_AFTER = 60.0
"""A task that ran this long before failing starts its backoff from scratch."""


class Supervisor:
    def __init__(self, group: asyncio.TaskGroup, restart_cap: float = 60.0) -> None:
        self._group = group
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._problems = ProblemLog(log)
        self._restart_cap = restart_cap
        self.restarts: dict[str, int] = {}

    def start(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"task {name} is already running")
        self._tasks[name] = self._group.create_task(self._keep_running(name, factory), name=name)

    async def _keep_running(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        backoff = Backoff(base=1.0, cap=self._restart_cap)
        while True:
            started = time.monotonic()
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - started > HEALTHY_AFTER:
                    backoff.reset()
                delay = backoff.next()
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self._problems.report(
                    name, f"task {name} failed: {type(exc).__name__}: {exc}; restarting",
                    exc_info=exc)
                await asyncio.sleep(delay)

    async def stop(self, names: list[str] | None = None, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Cancel the named tasks (all when None) and wait for them, at most ``timeout``."""
        selected = list(self._tasks) if names is None else [n for n in names if n in self._tasks]
        tasks = [self._tasks.pop(n) for n in selected]
        for task in tasks:
            task.cancel()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("task %s did not stop within %.1fs", task.get_name(), timeout)

    def names(self) -> list[str]:
        return [n for n, t in self._tasks.items() if not t.done()]
