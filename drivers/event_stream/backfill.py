"""After an outage, ask a Hikvision access terminal for the events the stream missed.

``POST /ISAPI/AccessControl/AcsEvent?format=json`` with ``AcsEventCond`` (searchID,
searchResultPosition, maxResults, major, minor, startTime, endTime) answers one page of
``AcsEvent.InfoList`` with ``totalMatches`` and ``responseStatusStrg`` (``MORE`` while
pages remain). Runs after every (re)connect of the host's stream, and so after a gateway
restart, from the device's stored position (position.py): each page is submitted, then
committed, then the position advances. Events already stored from the stream are
recognised by ``serialNo`` and skipped.

The end of the window is the device's "now" plus a day: the terminal's clock is the one
that stamped the events, and a gateway clock behind it must not cut the newest off.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from drivers.event_stream.client import NotJson
from drivers.event_stream.conditions import BadAnswer
from drivers.event_stream.events import BadPart, StreamEvent, access_event
from gateway.errors import DeviceError

if TYPE_CHECKING:
    from drivers.event_stream.stream import Attachment, HostStream

log = logging.getLogger("iotgw.event_stream.backfill")

MAX_PAGES = 10_000
"""Guard against a device that answers MORE forever."""
END_MARGIN = 86400


def device_iso(time_ns: int, utc_offset: int | None) -> str:
    """``2026-11-28T17:05:03+08:00``: whole seconds, in the device's offset."""
    if utc_offset is None:
        local = datetime.now().astimezone().utcoffset()
        utc_offset = int(local.total_seconds()) if local is not None else 0
    tz = timezone(timedelta(seconds=utc_offset))
    return datetime.fromtimestamp(time_ns // 1_000_000_000, UTC).astimezone(tz).isoformat()


async def backfill_loop(stream: HostStream) -> None:
    """Supervised: after each connect, backfill every attached device that asks for it."""
    while True:
        await stream.connected.wait()
        stream.connected.clear()
        for att in list(stream.attachments):
            if not att.config.backfill:
                continue
            try:
                count = await backfill(stream, att)
            except DeviceError as exc:
                att.ctx.count("backfill_failed")
                if isinstance(exc, NotJson):
                    att.ctx.count("bad_json")
                    stream.counters["bad_json"] += 1
                # Logged once per device and kind of failure, not per message text.
                stream.problems.report(f"backfill:{att.ctx.device_id}",
                                       f"{stream.name}: backfill of {att.ctx.device_id} "
                                       f"failed: {exc}", level=logging.WARNING,
                                       kind=type(exc).__name__)
                # Try again at the next connect; the position has not moved past the gap.
                continue
            stream.problems.recovered(f"backfill:{att.ctx.device_id}",
                                      f"{stream.name}: backfill of {att.ctx.device_id} "
                                      "works again")
            if count:
                log.info("%s: backfilled %d missed events for %s", stream.name, count,
                         att.ctx.device_id)


async def backfill(stream: HostStream, att: Attachment) -> int:
    """Fetch and store everything after the position; returns the events stored."""
    cfg = att.config
    position = att.position
    assert position.path is not None and stream.profile.backfill_path is not None
    if position.load_error is not None:
        stream.problems.report(f"position:{att.ctx.device_id}",
                               f"backfill position unreadable, reading back "
                               f"{cfg.backfill_max:g}s: {position.load_error}")
        position.load_error = None
    now_ns = time.time_ns()
    oldest = now_ns - int(cfg.backfill_max * 1e9)
    if position.time_ns is None:
        if position.committed or position.path.exists():
            position.time_ns = oldest
        else:
            position.start_now()
            return 0
    start_ns = max(position.time_ns, oldest)
    cond: dict[str, Any] = {
        "searchID": uuid.uuid4().hex, "searchResultPosition": 0,
        "maxResults": cfg.backfill_page, "major": cfg.backfill_major,
        "minor": cfg.backfill_minor,
        "startTime": device_iso(start_ns, position.utc_offset),
        "endTime": device_iso(now_ns + END_MARGIN * 1_000_000_000, position.utc_offset),
    }
    stored = 0
    for _page in range(MAX_PAGES):
        doc = await stream.http.post_json(stream.profile.backfill_path, {"AcsEventCond": cond})
        acs = doc.get("AcsEvent") if isinstance(doc, dict) else None
        if not isinstance(acs, dict):
            raise BadAnswer(f"{stream.name}: AcsEvent answer without an AcsEvent object")
        infos = acs.get("InfoList") or []
        if not isinstance(infos, list):
            raise BadAnswer(f"{stream.name}: AcsEvent.InfoList is not a list")
        events: list[StreamEvent] = []
        for record in infos:
            try:
                if not isinstance(record, dict):
                    raise BadPart("bad_event", "InfoList entry is not an object")
                events.append(access_event(record, None))
            except BadPart as exc:
                stream._bad(exc.kind, f"backfill: {exc}", repr(record).encode()[:4096])
        stored += await _store(stream, att, events)
        cond["searchResultPosition"] += len(infos)
        total = acs.get("totalMatches")
        status = str(acs.get("responseStatusStrg", "")).upper()
        if status != "MORE" or not infos or \
                (isinstance(total, int) and cond["searchResultPosition"] >= total):
            break
        await asyncio.sleep(0)  # let the stream reader run between pages
    if stored:
        att.ctx.count("backfilled", stored)
    return stored


async def _store(stream: HostStream, att: Attachment, events: list[StreamEvent]) -> int:
    """New events of one page: submitted, committed, then the position advances."""
    position = att.position
    new = [e for e in events if att.wants(e) and position.is_new(e)]
    duplicates = len(events) - len(new)
    if duplicates:
        att.ctx.count("duplicate", duplicates)
    if new:
        # The same path as stream events: poison costs one event, and the position
        # advances once the page is committed.
        await stream._submit(att, [stream.reading(att, e) for e in new], list(new))
        await stream.gateway.wait_committed()
    return len(new)
