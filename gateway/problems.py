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


MAX_KEYS = 1024
"""Distinct problems remembered per log. Keys often carry a peer or a value (a source
address, a device id from a request): without a bound, an attacker with many addresses
(an IPv6 prefix) grows memory and logs a line per address. Past it, new keys are one."""

OVERFLOW_KEY = "(other problems)"


class ProblemLog:
    def __init__(self, logger: logging.Logger, *, max_keys: int = MAX_KEYS) -> None:
        self._log = logger
        self._active: dict[str, _Active] = {}
        self.totals: dict[str, int] = {}
        self._max_keys = max_keys

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
        if key not in self.totals and len(self.totals) >= self._max_keys:
            key, kind = OVERFLOW_KEY, OVERFLOW_KEY
            message = (f"more than {self._max_keys} distinct problems; further ones are "
                       f"counted together (e.g. {message})")
            summary_every = 300.0 if summary_every is None else summary_every
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
