"""Log a failing thing once, count its repeats, and say when it recovers.

A dead meter polled every second, or a sink down for an hour, must not fill the SD card
with identical tracebacks; operators still need the first error, how often it repeated,
and the moment it cleared.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass


@dataclass
class _Active:
    message: str
    repeats: int = 0


class ProblemLog:
    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._active: dict[str, _Active] = {}
        self.totals: dict[str, int] = {}

    def report(self, key: str, message: str, *, level: int = logging.ERROR,
               exc_info: BaseException | None = None) -> None:
        """First report of ``key`` is logged; later ones only counted, unless the
        message changes (a different failure of the same thing deserves a line)."""
        self.totals[key] = self.totals.get(key, 0) + 1
        active = self._active.get(key)
        if active is not None and active.message == message:
            active.repeats += 1
            return
        self._active[key] = _Active(message)
        self._log.log(level, "%s", message, exc_info=exc_info)

    def recovered(self, key: str, message: str) -> None:
        active = self._active.pop(key, None)
        if active is not None:
            suffix = f" (error repeated {active.repeats} more times)" if active.repeats else ""
            self._log.info("%s%s", message, suffix)

    def is_active(self, key: str) -> bool:
        return key in self._active
