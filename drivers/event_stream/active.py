"""Hikvision's repeating active events, turned into one start and one stop.

A Hikvision camera in motion sends ``vmd active`` about once a second for as long as the
motion lasts and never sends ``inactive`` for it. Stored as they come, one walk past a
camera is thirty events; the end is never recorded. So: the first ``active`` of an
(event, channel) is the start; repeats only refresh it; an explicit ``inactive``, or no
repeat for ``clear_after`` seconds, is the stop (with ``cleared`` saying which).
"""

from __future__ import annotations

import dataclasses

from drivers.event_stream.events import StreamEvent

Key = tuple[str, int | None]


class ActiveTracker:
    def __init__(self, clear_after: float) -> None:
        self.clear_after = clear_after
        self.active: dict[Key, tuple[float, StreamEvent]] = {}
        self.repeats = 0
        self.unmatched_stops = 0

    def offer(self, event: StreamEvent, now: float) -> list[StreamEvent]:
        """The events to store for ``event`` arriving at monotonic time ``now``."""
        if event.action == "pulse":
            return [event]
        key = (event.code, event.channel)
        if event.action == "start":
            if key in self.active:
                self.repeats += 1
                self.active[key] = (now, self.active[key][1])
                return []
            self.active[key] = (now, event)
            return [event]
        if self.active.pop(key, None) is None:
            self.unmatched_stops += 1
            return []
        return [dataclasses.replace(event, fields={**event.fields, "cleared": "inactive"})]

    def expire(self, now: float) -> list[StreamEvent]:
        """Stops for the events not repeated within ``clear_after``."""
        due = [k for k, (seen, _) in self.active.items() if now - seen >= self.clear_after]
        return [self._stop(k, "timeout") for k in due]

    def clear_all(self, reason: str) -> list[StreamEvent]:
        """Stops for everything active (the stream dropped: nobody knows any more)."""
        return [self._stop(k, reason) for k in list(self.active)]

    def _stop(self, key: Key, reason: str) -> StreamEvent:
        _, start = self.active.pop(key)
        return StreamEvent(start.code, "stop", start.channel, tags=start.tags,
                           fields={"cleared": reason})
