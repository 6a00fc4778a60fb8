"""Where an access terminal's event log was read up to, kept durably per device.

After an outage (of the terminal, the network or the gateway itself) the backfill asks
the terminal for everything since ``time_ns``. The position only advances after the
readings it covers are committed to the buffer, so a crash between the two re-reads a
page rather than losing one; the event ids (``serialNo`` with the device second)
recently committed are kept with it, so what is read twice is recognised and stored once.

One small JSON file per device under ``<data_dir>/event_stream/``, replaced atomically
(write, fsync, rename, fsync the directory): a power cut leaves the old or the new file,
never half of one.
"""

from __future__ import annotations

import collections
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from drivers.event_stream.events import StreamEvent
from gateway import jsonsafe

RECENT = 4096
"""Event ids remembered (committed or in flight): a terminal logs a few thousand a day."""

Key = tuple[int, int | None]
"""(serialNo, device second): a terminal reset after a firmware upgrade counts serials
from 1 again, and its new events must not pass for old ones."""


def key_of(event: StreamEvent) -> Key | None:
    if event.serial is None:
        return None
    return (event.serial, None if event.time_ns is None else event.time_ns // 1_000_000_000)


@dataclass
class Position:
    path: Path | None
    """None: in memory only (a device without backfill still drops repeated event ids)."""
    time_ns: int | None = None
    """Device time of the newest committed access event (None: never read)."""
    utc_offset: int | None = None
    committed: collections.OrderedDict[Key, None] = field(
        default_factory=collections.OrderedDict)
    seen: collections.OrderedDict[Key, None] = field(default_factory=collections.OrderedDict)
    """Committed ids plus those submitted and not yet committed: the de-duplication set."""
    load_error: str | None = None

    @classmethod
    def load(cls, data_dir: Path, device_id: str) -> Position:
        path = data_dir / "event_stream" / f"{device_id}.json"
        position = cls(path)
        try:
            # a damaged file may hold anything, deep nesting too: JsonRefused, not a crash
            doc = jsonsafe.parse(path.read_text(encoding="utf-8"))
            time_ns = doc["time_ns"]
            offset = doc.get("utc_offset")
            seen = doc.get("seen", [])
            if not (time_ns is None or isinstance(time_ns, int)) or \
                    not (offset is None or isinstance(offset, int)) or \
                    not all(isinstance(k, list) and len(k) == 2 and isinstance(k[0], int)
                            and (k[1] is None or isinstance(k[1], int)) for k in seen):
                raise ValueError("unexpected value types")
        except FileNotFoundError:
            return position
        except (OSError, ValueError, KeyError, TypeError) as exc:
            position.load_error = f"{path}: {type(exc).__name__}: {exc}"
            return position
        position.time_ns, position.utc_offset = time_ns, offset
        for serial, second in seen[-RECENT:]:
            position.committed[(serial, second)] = None
            position.seen[(serial, second)] = None
        return position

    def is_new(self, event: StreamEvent) -> bool:
        """True the first time an event id is offered (then it is remembered as seen);
        events without an id are new unless older than the position."""
        key = key_of(event)
        if key is None:
            return self.time_ns is None or event.time_ns is None or event.time_ns > self.time_ns
        if key in self.seen:
            return False
        self.seen[key] = None
        if len(self.seen) > RECENT * 2:
            self.seen.popitem(last=False)
        return True

    def forget(self, event: StreamEvent) -> None:
        """An event that was not submitted after all (refused): may be offered again."""
        key = key_of(event)
        if key is not None and key not in self.committed:
            self.seen.pop(key, None)

    def advance(self, events: list[StreamEvent]) -> None:
        """Committed: move the position past ``events`` and save it."""
        for event in events:
            key = key_of(event)
            if key is not None:
                self.committed[key] = None
                self.committed.move_to_end(key)
            if event.time_ns is not None and (self.time_ns is None or
                                              event.time_ns > self.time_ns):
                self.time_ns = event.time_ns
            if event.utc_offset is not None:
                self.utc_offset = event.utc_offset
        while len(self.committed) > RECENT:
            self.committed.popitem(last=False)
        self.save()

    def start_now(self) -> None:
        """First start: nothing to catch up on; the log is read from now on."""
        self.time_ns = time.time_ns()
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        doc = {"time_ns": self.time_ns, "utc_offset": self.utc_offset,
               "seen": [list(k) for k in self.committed]}
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
