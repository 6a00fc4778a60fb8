"""The alarm journal and saved alarm state, in the gateway's buffer database.

Why the buffer's own file and connection: every transition is also an ``alarm`` reading
for the stores, and committing the journal row, the alarm's saved state and that reading
in ONE SQLite transaction (:meth:`Buffer.commit_with`) means after ``kill -9`` either all
three exist or none does. The buffer's WAL, ``synchronous`` and disk-full handling apply
unchanged, and its single worker thread orders alarm commits with reading commits.

Tables (created on first use; the buffer ignores tables it does not own):

``alarm_state``
    One row per (rule, device): what the engine needs to come back after a restart:
    the visible state, ``seq``, the rule's digest at the time (a changed rule restarts
    its timers) and a JSON ``data`` column with flags and timers (on-delay start,
    off-delay start, shelve expiry, re-alarm time, chatter, count/window state).
``alarm_journal``
    One row per transition, ``UNIQUE (alarm_id, seq)``: a transition can never be
    journaled twice, whatever happens.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.alarms.model import ACTIVE_STATES, UNACKED_STATES, AlarmState, Transition
from gateway.alarms.state import Alarm
from gateway.lineprotocol import encode_many
from gateway.reading import FieldValue, Reading

SCHEMA = """
CREATE TABLE IF NOT EXISTS alarm_state (
    rule TEXT NOT NULL,
    device TEXT NOT NULL,
    alarm_id TEXT NOT NULL,
    state TEXT NOT NULL,
    severity INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    since REAL NOT NULL,
    value,
    message TEXT NOT NULL,
    digest TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (rule, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alarm_journal (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alarm_id TEXT NOT NULL,
    rule TEXT NOT NULL,
    device TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    previous TEXT NOT NULL,
    cause TEXT NOT NULL,
    client TEXT,
    severity INTEGER NOT NULL,
    value,
    message TEXT NOT NULL,
    UNIQUE (alarm_id, seq)
);
CREATE INDEX IF NOT EXISTS alarm_journal_at ON alarm_journal (at);
"""

MEASUREMENT = "alarm"

log = logging.getLogger("iotgw.alarms")

StateRow = tuple[str, str, int, str, dict[str, Any], float, FieldValue | None, str, int]
"""(rule, device, seq, digest, data, since, value, message, severity): what
Engine.restore takes."""


def ensure_schema(conn: sqlite3.Connection) -> None:
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def load_state(conn: sqlite3.Connection) -> list[StateRow]:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "alarm_state" not in tables:
        return []
    rows = conn.execute("SELECT rule, device, seq, digest, data, since, value, message, "
                        "state, severity FROM alarm_state").fetchall()
    out: list[StateRow] = []
    damaged: list[str] = []
    for r in rows:
        try:
            row = json.loads(r[4])
            if not isinstance(row, dict) or not _timers_ok(row):
                raise ValueError("not a state object")
            out.append((r[0], r[1], int(r[2]), r[3], row, float(r[5]), r[6], r[7],
                        _severity(r[9])))
        except (TypeError, ValueError):
            damaged.append(f"{r[0]}/{r[1]}")
            out.append(_rebuilt(conn, r))
    if damaged:
        log.warning("alarms: %d saved alarm row(s) unreadable (%s%s): restored from their "
                    "state and seq columns, without timers", len(damaged),
                    ", ".join(damaged[:5]), " ..." if len(damaged) > 5 else "")
    return out


_TIMER_KEYS = ("shelved_until", "pending_on", "pending_off", "realarm_at")


def _timers_ok(row: dict[str, Any]) -> bool:
    changes = row.get("changes") or []
    return all(row.get(k) is None or isinstance(row.get(k), (int, float))
               for k in _TIMER_KEYS) and isinstance(changes, list) and all(
        isinstance(c, (int, float)) for c in changes)


def _rebuilt(conn: sqlite3.Connection, r: Sequence[Any]) -> StateRow:
    """A damaged alarm_state row (a bad sector, a hand edit): the operator-visible state
    from its ``state`` column, seq never below what the journal already used, no timers
    (the next reading decides again)."""
    try:
        state = AlarmState(r[8])
    except ValueError:
        state = AlarmState.NORMAL
    (journal_seq,) = conn.execute("SELECT MAX(seq) FROM alarm_journal WHERE rule = ? AND "
                                  "device = ?", (r[0], r[1])).fetchone()
    seqs = [s for s in (r[2], journal_seq) if isinstance(s, int)]
    since = r[5] if isinstance(r[5], (int, float)) else 0.0
    row = {"active": state in ACTIVE_STATES, "acked": state not in UNACKED_STATES,
           "oos": state is AlarmState.OUT_OF_SERVICE, "shelved": state is AlarmState.SHELVED,
           "suppressed": state is AlarmState.SUPPRESSED}
    return (r[0], r[1], max(seqs, default=0), "", row, float(since), r[6],
            r[7] if isinstance(r[7], str) else "", _severity(r[9]))


def _severity(value: Any) -> int:
    """The saved severity (1 .. 4); 4, the lowest, where the column holds anything else."""
    return value if type(value) is int and 1 <= value <= 4 else 4


def _stored(value: FieldValue | None) -> Any:
    return value


StateRecord = tuple[str, str, str, str, int, int, float, Any, str, str, str]


def state_records(alarms: Iterable[Alarm], digests: Mapping[str, str]) -> list[StateRecord]:
    """The alarm_state rows of ``alarms`` as they are now (taken on the event loop, so
    the worker thread writes a consistent copy)."""
    return [(a.rule, a.device, a.alarm_id, a.state.value, a.severity, a.seq, a.since,
             _stored(a.value), a.message, digests.get(a.rule, ""), json.dumps(a.to_row()))
            for a in alarms]


def write(conn: sqlite3.Connection, transitions: Sequence[Transition],
          rows: Sequence[StateRecord]) -> None:
    """Journal rows and saved state, inside the caller's transaction (the tables exist:
    :func:`ensure_schema` ran when the service opened)."""
    if transitions:
        conn.executemany(
            "INSERT INTO alarm_journal (alarm_id, rule, device, seq, at, state, previous, "
            "cause, client, severity, value, message) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            [(t.alarm.alarm_id, t.alarm.key.rule, t.alarm.key.device, t.alarm.seq, t.at,
              t.alarm.state.value, t.previous.value, t.cause, t.client, t.alarm.severity,
              _stored(t.alarm.value), t.alarm.message) for t in transitions])
    if rows:
        conn.executemany(
            "INSERT INTO alarm_state (rule, device, alarm_id, state, severity, seq, since, "
            "value, message, digest, data) VALUES (?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (rule, device) DO UPDATE SET alarm_id=excluded.alarm_id, "
            "state=excluded.state, severity=excluded.severity, seq=excluded.seq, "
            "since=excluded.since, value=excluded.value, message=excluded.message, "
            "digest=excluded.digest, data=excluded.data", rows)


def prune(conn: sqlite3.Connection, before: float) -> int:
    """Delete journal entries older than ``before`` (epoch seconds); returns how many."""
    return conn.execute("DELETE FROM alarm_journal WHERE at < ?", (before,)).rowcount


def alarm_lines(transitions: Sequence[Transition], core_tags: Mapping[str, str]
                ) -> tuple[list[bytes], int, int]:
    """The ``alarm`` readings of ``transitions``: tags rule, device, severity plus the
    device's installer tags and site/gateway; fields active, acked, seq (integers) and
    state (a string), so InfluxQL and PromQL both see them. (lines, oldest_ns, newest_ns)"""
    readings = []
    for t in transitions:
        a = t.alarm
        tags = {**a.tags, **core_tags, "rule": a.key.rule, "device": a.key.device,
                "severity": str(a.severity)}
        fields: dict[str, FieldValue] = {"active": int(a.active), "acked": int(a.acked),
                                         "seq": a.seq, "state": a.state.value}
        readings.append(Reading(MEASUREMENT, tags, fields, int(t.at * 1e9)))
    if not readings:
        return [], 0, 0
    times = [r.time_ns for r in readings]
    return encode_many(readings), min(times), max(times)


@dataclass(frozen=True)
class JournalEntry:
    at: float
    rule: str
    device: str
    seq: int
    state: str
    previous: str
    cause: str
    client: str | None
    severity: int
    value: Any
    message: str
    alarm_id: str


def read_offline(path: Path, limit: int = 50) -> tuple[list[dict[str, Any]], list[JournalEntry]]:
    """The saved alarms and the newest ``limit`` journal rows of the buffer at ``path``,
    opened read-only (safe while the gateway runs: WAL readers never block it)."""
    if not path.is_file():
        raise FileNotFoundError(f"no buffer file at {path}")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "alarm_state" not in tables:
            return [], []
        alarms = [
            {"rule": r[0], "device": r[1], "state": r[2], "severity": r[3], "seq": r[4],
             "since": r[5], "value": r[6], "message": r[7], "alarm_id": r[8]}
            for r in conn.execute("SELECT rule, device, state, severity, seq, since, value, "
                                  "message, alarm_id FROM alarm_state ORDER BY rule, device")]
        journal = [JournalEntry(*r) for r in conn.execute(
            "SELECT at, rule, device, seq, state, previous, cause, client, severity, value, "
            "message, alarm_id FROM alarm_journal ORDER BY id DESC LIMIT ?", (limit,))]
        return alarms, journal[::-1]
    finally:
        conn.close()


ACTIVE_VALUES = frozenset({AlarmState.ACTIVE_UNACKED.value, AlarmState.ACTIVE_ACKED.value})
