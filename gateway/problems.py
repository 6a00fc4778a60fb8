"""Log a failing thing once, count its repeats, and say when it recovers.

A dead meter polled every second, or a sink down for an hour, must not fill the SD card
with identical tracebacks; operators still need the first error, how often it repeated,
and the moment it cleared. Problems that never "recover" (a store refusing one kind of
line, again and again) can ask for a periodic summary instead, so a steady stream of
them is one line per interval, not one per occurrence.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field


@dataclass
class _Active:
    kind: str
    repeats: int = 0
    """Repeats since the message (or its last summary) was logged."""
    logged_at: float = field(default_factory=time.monotonic)


class ProblemLog:
    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._active: dict[str, _Active] = {}
        self.totals: dict[str, int] = {}

    def report(self, key: str, message: str, *, level: int = logging.ERROR,
               exc_info: BaseException | None = None, detail: str = "",
               summary_every: float | None = None, kind: str | None = None) -> None:
        """First report of ``key`` is logged; later ones only counted, unless the
        message changes (a different failure of the same thing deserves a line).

        ``detail`` (an example: the offending line) is logged with the first report but
        not compared, so it may differ every time; ``kind``, when given, is compared
        instead of the message (a server's message with numbers that vary). With
        ``summary_every`` a repeat more than that many seconds after the last line logs
        how many came since."""
        self.totals[key] = self.totals.get(key, 0) + 1
        kind = message if kind is None else kind
        active = self._active.get(key)
        if active is not None and active.kind == kind:
            active.repeats += 1
            if summary_every is not None and \
                    time.monotonic() - active.logged_at >= summary_every:
                self._log.log(level, "%s (%d more times in the last %.0fs)", message,
                              active.repeats, time.monotonic() - active.logged_at)
                active.repeats = 0
                active.logged_at = time.monotonic()
            return
        self._active[key] = _Active(kind)
        if detail:
            self._log.log(level, "%s (%s)", message, detail, exc_info=exc_info)
        else:
            self._log.log(level, "%s", message, exc_info=exc_info)

    def recovered(self, key: str, message: str) -> None:
        active = self._active.pop(key, None)
        if active is not None:
            suffix = f" (error repeated {active.repeats} more times)" if active.repeats else ""
            self._log.info("%s%s", message, suffix)
