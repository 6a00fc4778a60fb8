"""``iotgw status CONFIG``: the running gateway's ``/status`` as tables, for an installer
on the box.

Reads the health endpoint's address from the config file, fetches ``/status`` with the
standard library (no event loop, no aiohttp client needed) and prints what ``/metrics``
exposes in a form one can read over SSH. Exit codes: 0 live and ready, 1 not ready or not
reachable, 2 bad config.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

FETCH_TIMEOUT = 5.0


def status_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/status"


def fetch(url: str, timeout: float = FETCH_TIMEOUT) -> dict[str, Any]:
    """The JSON snapshot; raises OSError (URLError, timeout) when the gateway does not
    answer: not running, or its event loop is stuck."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _age(then: float | None, now: float) -> str:
    if then is None:
        return "never"
    seconds = max(0.0, now - then)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.1f}d ago"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
               for r in rows)
    return out


def _state_with_condition(device: dict[str, Any]) -> str:
    """``offline (unreachable)``: the driver's word says what to do about it."""
    condition = device.get("condition")
    if condition is None or condition == "up":
        return str(device["state"])
    return f"{device['state']} ({condition})"


def _quarantined(buf: dict[str, Any]) -> str:
    """The chunks that failed their checksum, when there are any (an operator has to
    look at them: docs/operations.md)."""
    chunks = buf.get("quarantined_chunks_total") or 0
    if not chunks:
        return ""
    return (f"; QUARANTINED {chunks:,} damaged chunks ({buf['quarantined_lines_total']:,} "
            "lines, not sent: see the quarantine table)")


def format_status(snap: dict[str, Any]) -> str:
    gw, health, loop, clock = snap["gateway"], snap["health"], snap["loop"], snap["clock"]
    readings, buf = snap["readings"], snap["buffer"]
    now = gw["now"]
    out = [f"gateway {gw['id']} (site {gw['site']}), iotgw {gw['version']}, pid {gw['pid']}, "
           f"up {_age(gw['started'], now).removesuffix(' ago')}",
           f"live: {'yes' if health['live'] else 'NO'}   ready: "
           f"{'yes' if health['ready'] else 'NO'}"]
    for probe in ("liveness", "readiness"):
        for name, check in health[probe].items():
            if not check["ok"]:
                out.append(f"  FAIL {name}: {check['detail']}")
    out.append(f"event loop: lag {loop['lag_seconds'] * 1000:.1f} ms (worst last minute "
               f"{loop['lag_max_seconds'] * 1000:.1f} ms), {loop['stalls_total']} stalls")
    clock_notes = []
    if clock["before_build"]:
        clock_notes.append("NOT SET (before the build date)")
    if clock["synchronised"] is False:
        clock_notes.append("kernel not NTP-synchronised")
    jumps = clock["jumps_forward"] + clock["jumps_backward"]
    if jumps:
        clock_notes.append(f"{jumps} jumps, last {clock['last_jump_seconds']:+.1f}s "
                           f"{_age(clock['last_jump_at'], now)}")
    out.append("clock: " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(clock["now"]))
               + (f" ({'; '.join(clock_notes)})" if clock_notes else ""))
    dropped = ", ".join(f"{k} {v}" for k, v in readings["dropped"].items()) or "none"
    out.append(f"readings: {readings['in']:,} in, {readings['committed']:,} committed, "
               f"{readings['pending']:,} queued; dropped: {dropped}")
    if buf["ok"]:
        cap = f" of {_size(buf['max_bytes'])}" if buf.get("max_bytes") else ""
        out.append(f"buffer: {buf['depth_lines']:,} lines, {_size(buf['bytes_held'])}{cap} "
                   f"({_size(buf['file_bytes'])} on disk, {_size(buf.get('disk_free_bytes'))} "
                   f"free), {buf['dropped_full_total']:,} dropped when full"
                   + _quarantined(buf))
    else:
        out.append(f"buffer: UNAVAILABLE: {buf['error']}")
    out.append("")
    sink_rows = [[name, s["state"], "-" if s["lag_lines"] is None else f"{s['lag_lines']:,}",
                  f"{s['sent_lines']:,}", str(s["rejected_lines"]), str(s["errors"]),
                  (s["last_error"] or "")[:60]]
                 for name, s in snap["sinks"].items()]
    out.extend(_table(["sink", "state", "lag lines", "sent", "rejected", "errors",
                       "last error"], sink_rows))
    out.append("")
    device_rows = [[device_id, _state_with_condition(d), _age(d["last_seen"], now),
                    ", ".join(f"{k} {v}" for k, v in d["counters"].items()) or "-",
                    (d["last_error"] or "")[:60]]
                   for device_id, d in snap["devices"].items()]
    out.extend(_table(["device", "state", "last seen", "counters", "last error"], device_rows))
    out.extend(_alarm_lines(snap.get("alarms"), now))
    restarts = snap["tasks"]["restarts"]
    if restarts:
        out.append("")
        out.append("task restarts: " + ", ".join(f"{k} {v}" for k, v in restarts.items()))
    for name, failure in snap["tasks"].get("failing", {}).items():
        out.append(f"task {name} FAILING ({failure['failures']}x): {failure['error'][:100]}")
    return "\n".join(out)


def _alarm_lines(alarms: dict[str, Any] | None, now: float) -> list[str]:
    """The alarm summary and every alarm not in ``normal``, most severe first."""
    if not alarms or not alarms["enabled"]:
        return []
    flood = ", FLOOD (more than 10 raised in 10 minutes)" if alarms["flood"] else ""
    out = ["", f"alarms: {alarms['active']} active, {alarms['unacked']} unacknowledged, "
           f"{alarms['raised_last_10min']} raised in the last 10 minutes{flood}"]
    rows = [[a["rule"], a["device"], a["state"] + (" (chatter)" if a["chatter"] else ""),
             str(a["severity"]), _age(a["since"], now), "-" if a["value"] is None
             else str(a["value"])[:20], (a["message"] or "")[:60]]
            for a in alarms["list"]]
    if rows:
        out.extend(_table(["rule", "device", "state", "sev", "since", "value", "message"],
                          rows))
    if alarms["list_truncated"]:
        out.append(f"(first {len(rows)} shown; `iotgw alarms CONFIG` lists every one)")
    return out


def run_status(config: Any, as_json: bool = False) -> int:
    """``config`` is a LoadedConfig; returns the exit code."""
    health = config.model.health
    if health is None or not health.enabled:
        print(f"{config.path}: no enabled 'health' section, so the gateway serves no status; "
              "add `health: {listen: 127.0.0.1:9108}` or use `iotgw buffer stats`")
        return 1
    url = status_url(health.host, health.port)
    try:
        snap = fetch(url)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"no answer from {url}: {exc} (gateway not running, or its event loop is "
              "stuck: see `journalctl -u iotgw`)")
        return 1
    print(json.dumps(snap, indent=2) if as_json else format_status(snap))
    return 0 if snap["health"]["ready"] else 1
