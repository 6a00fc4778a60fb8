"""Named background tasks in one TaskGroup, each restarted with backoff when it fails.

A driver bug or a device that makes a library raise must cost that device only: its
task is logged once (with the traceback), counted, shown as failing in readiness and in
the owner's state (through ``on_failure``), restarted after a growing pause, and
everything else keeps running. A task that then runs ``HEALTHY_AFTER`` seconds without
failing again is declared recovered (logged at INFO, ``on_recovered`` called).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from gateway.backoff import Backoff
from gateway.errors import GatewayError
from gateway.problems import ProblemLog

log = logging.getLogger("iotgw.supervisor")

HEALTHY_AFTER = 60.0
"""A task that ran this long after a failure is recovered; its backoff starts afresh."""

TaskFactory = Callable[[], Awaitable[None]]
FailureHook = Callable[[BaseException], None]
RecoveryHook = Callable[[], None]


@dataclass
class TaskFailure:
    """A task that failed and has not yet run ``HEALTHY_AFTER`` seconds since."""

    error: str
    failures: int
    last_failure: float
    """Wall-clock time of the last failure."""
    retry_in: float
    """Seconds until the restart: the backoff, or the cap straight away for an error the
    project marks not retryable (a config or permission problem will not fix itself)."""


class TaskStarter(Protocol):
    """What a plugin that owns background work gets: start and stop named tasks under
    the gateway's supervision (a shared connection's reader, an intake worker)."""

    def start(self, name: str, factory: TaskFactory, *, on_failure: FailureHook | None = None,
              on_recovered: RecoveryHook | None = None) -> None: ...

    async def stop(self, names: list[str] | None = None,
                   timeout: float = 2.0) -> None: ...  # noqa: ASYNC109


class Supervisor:
    def __init__(self, group: asyncio.TaskGroup, restart_cap: float = 60.0,
                 healthy_after: float = HEALTHY_AFTER,
                 on_any_failure: Callable[[str, BaseException], None] | None = None) -> None:
        """``on_any_failure(name, exc)`` sees every task's failure (the gateway starts
        again with OpenSSL when a task needed it after all)."""
        self._group = group
        self._on_any_failure = on_any_failure
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._problems = ProblemLog(log)
        self._restart_cap = restart_cap
        self._healthy_after = healthy_after
        self.restarts: dict[str, int] = {}
        self.failing: dict[str, TaskFailure] = {}

    def start(self, name: str, factory: TaskFactory, *, on_failure: FailureHook | None = None,
              on_recovered: RecoveryHook | None = None) -> None:
        if name in self._tasks and not self._tasks[name].done():
            raise RuntimeError(f"task {name} is already running")
        self._tasks[name] = self._group.create_task(
            self._keep_running(name, factory, on_failure, on_recovered), name=name)

    async def _keep_running(self, name: str, factory: TaskFactory,
                            on_failure: FailureHook | None,
                            on_recovered: RecoveryHook | None) -> None:
        backoff = Backoff(base=1.0, cap=self._restart_cap)
        loop = asyncio.get_running_loop()
        healthy: asyncio.TimerHandle | None = None
        try:
            while True:
                try:
                    await factory()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if healthy is not None:
                        healthy.cancel()
                        healthy = None
                    if name not in self.failing:
                        backoff.reset()
                    delay = backoff.next()
                    if isinstance(exc, GatewayError) and not exc.retryable:
                        delay = self._restart_cap  # will not fix itself soon: no hurry
                    self._failed(name, exc, on_failure, delay)
                    await asyncio.sleep(delay)
                    healthy = loop.call_later(self._healthy_after, self._recovered, name,
                                              on_recovered)
        finally:
            if healthy is not None:
                healthy.cancel()
            self.failing.pop(name, None)

    def _failed(self, name: str, exc: BaseException, on_failure: FailureHook | None,
                delay: float) -> None:
        error = f"{type(exc).__name__}: {exc}"
        self.restarts[name] = self.restarts.get(name, 0) + 1
        previous = self.failing.get(name)
        self.failing[name] = TaskFailure(error, (previous.failures if previous else 0) + 1,
                                         time.time(), delay)
        self._problems.report(name, f"task {name} failed: {error}; restarting",
                              detail=f"in {delay:.3g}s", exc_info=exc)
        hooks = [on_failure] if on_failure is not None else []
        if self._on_any_failure is not None:
            hooks.append(partial(self._on_any_failure, name))
        for hook in hooks:
            try:
                hook(exc)
            except Exception:  # a broken hook must not take the supervisor down
                log.exception("failure hook of task %s failed", name)

    def _recovered(self, name: str, on_recovered: RecoveryHook | None) -> None:
        failure = self.failing.pop(name, None)
        if failure is None:
            return
        self._problems.recovered(name, f"task {name} has run {self._healthy_after:g}s "
                                 f"without failing after {failure.failures} failure(s)")
        if on_recovered is not None:
            try:
                on_recovered()
            except Exception:
                log.exception("recovery hook of task %s failed", name)

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
