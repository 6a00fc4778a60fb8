"""Liveness and readiness verdicts, from a status snapshot.

Liveness (``/healthz``) asks "should this process be restarted?": the event loop turns
and readings get committed to the buffer. Nothing outside the box counts: a store that is
down is what the buffer is for, and restarting would not bring it back.

Readiness (``/readyz``) asks "is it doing its job?": buffer open, pipeline running, at
least one sink not failed (a failed sink is one the store refused for auth or a missing
bucket: data is buffered, but a person has to act), and no supervised task failing (a
task that raised is restarted, but until it has run a minute without failing again
something is broken: a driver bug, a poison input).

Pure functions of the snapshot, so the verdicts are tested without a running gateway.
"""

from __future__ import annotations

from typing import Any

Check = dict[str, Any]


def _check(ok: bool, detail: str) -> Check:
    return {"ok": ok, "detail": detail}


def liveness(snap: dict[str, Any]) -> dict[str, Check]:
    loop = snap["loop"]
    buffer = snap["buffer"]
    lag, limit = loop["lag_seconds"], loop["max_lag_seconds"]
    checks = {"event_loop": _check(lag <= limit, f"lag {lag:.3f}s (limit {limit:g}s)")}
    if not buffer.get("ok"):
        checks["buffer_writable"] = _check(False, buffer.get("error") or "buffer unavailable")
    else:
        stalled = loop.get("commit_stalled_seconds", 0.0)
        pending = snap["readings"]["pending"]
        if stalled and pending:
            checks["buffer_writable"] = _check(
                stalled <= _commit_limit(snap),
                f"{pending} readings waiting {stalled:.0f}s for a commit")
        else:
            checks["buffer_writable"] = _check(True, "commits flowing")
    return checks


def _commit_limit(snap: dict[str, Any]) -> float:
    return float(snap["loop"].get("commit_stall_limit_seconds", 60.0))


def readiness(snap: dict[str, Any]) -> dict[str, Check]:
    buffer = snap["buffer"]
    sinks = snap["sinks"]
    working = [name for name, sink in sinks.items() if sink["state"] != "failed"]
    failed = sorted(set(sinks) - set(working))
    failing = snap.get("tasks", {}).get("failing", {})
    return {
        "buffer_open": _check(bool(buffer.get("ok")), buffer.get("error") or "open"),
        "tasks_healthy": _check(not failing, "; ".join(
            f"{name} failed {f['failures']}x: {f['error']}" for name, f in failing.items())
            or "no task failing"),
        "pipeline_running": _check(bool(snap["pipeline_running"]),
                                   "running" if snap["pipeline_running"] else "not running"),
        "sink_available": _check(
            bool(working), f"{len(working)} of {len(sinks)} sinks not failed"
            + (f" (failed: {', '.join(failed)})" if failed else "")),
    }


def evaluate(snap: dict[str, Any]) -> dict[str, Any]:
    live = liveness(snap)
    ready = readiness(snap)
    return {
        "live": all(c["ok"] for c in live.values()),
        "ready": all(c["ok"] for c in ready.values()) and all(c["ok"] for c in live.values()),
        "liveness": live,
        "readiness": ready,
    }
