"""The central platform's half of the governance queries in docs/schema.md.

Some questions cannot be answered by one query in one store: "who is inside" needs the
last passage *per pseudonym*, and a pseudonym is a string field (InfluxDB) or a numeric
``<field>_key`` sample value (VictoriaMetrics), never a tag or label, so neither store can
group by it; contact tracing is a self-join in time, which InfluxQL and MetricsQL do not
have. The platform runs the documented queries and finishes here, on the rows. These
functions are what tests/test_governance_queries.py runs, so the documented two-step
queries are tested exactly as a platform would run them; a platform copies this file.

Nothing here talks to a store: callers pass rows (InfluxQL results as dicts, one per
point, tags included; VictoriaMetrics ``/api/v1/export`` lines) and query text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUERY_BLOCK = re.compile(r"<!-- query: (\w+) -->\n```(\w+)\n(.*?)\n```", re.S)

SUBJECT_FIELD = {"card": "card", "face": "person", "plate": "plate"}
"""Which field holds the pseudonym of an access event, by its ``kind`` tag."""
KEY_SUFFIX = "_key"
"""The numeric twin of a pseudonymised field (gateway/pseudonym.py)."""
PEOPLE = frozenset({"card", "face"})
VEHICLES = frozenset({"plate"})
NS_PER_MS = 1_000_000


def documented(doc: Path, language: str) -> dict[str, str]:
    """Every ``<!-- query: name -->`` block of one language in a markdown file."""
    return {name: text for name, lang, text in QUERY_BLOCK.findall(doc.read_text())
            if lang == language}


# -- filling a documented query's $placeholders ------------------------------------------


def influxql_literal(value: str | int) -> str:
    """A string as a quoted InfluxQL literal; an int (a time in ns) as itself."""
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fill(template: str, quote: Callable[[Any], str], **values: Any) -> str:
    """Replace every ``$name`` with ``quote(value)``; a placeholder left over is an error."""
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for ${name}")
        return quote(values[name])
    return re.sub(r"\$(\w+)", one, template)


def regex_alternation(values: Iterable[str]) -> str:
    """Label values as one MetricsQL regex (``gate=~"$gates"``; label regexes are
    anchored), metacharacters escaped, then escaped again for the quoted string."""
    return "|".join(re.escape(v).replace("\\", "\\\\").replace('"', '\\"')
                    for v in sorted(set(values)))


# -- passages: the rows of either store as one shape ----------------------------------


@dataclass(frozen=True, slots=True)
class Passage:
    """One access event, as the platform needs it for the joins below."""

    time_ns: int
    gate: str
    device: str
    direction: str
    kind: str
    subject: str | int
    """The pseudonym (InfluxDB) or its numeric key (VictoriaMetrics)."""
    result: str = ""


def passages_from_influxql(rows: Iterable[Mapping[str, Any]]) -> list[Passage]:
    """Raw InfluxQL rows selecting the subject fields and the tags (see docs/schema.md).

    The subject is the field named by the row's kind: on a card event from a terminal that
    also reports the person, the card is the subject."""
    out = []
    for row in rows:
        field = SUBJECT_FIELD.get(row.get("kind") or "")
        subject = row.get(field) if field else None
        if subject is None:
            continue
        out.append(Passage(int(row["time"]), row.get("gate") or row.get("device") or "",
                           row.get("device") or "", row.get("direction") or "", row["kind"],
                           subject, row.get("result") or ""))
    return sorted(out, key=lambda p: p.time_ns)


def passages_from_export(series: Iterable[Mapping[str, Any]]) -> list[Passage]:
    """VictoriaMetrics ``/api/v1/export`` lines of ``access_event_<field>_key`` series.

    Only the series whose field is the subject of its kind count (a card event's
    ``person_key`` is not a second passage). Times come back in milliseconds."""
    out = []
    for line in series:
        metric = line["metric"]
        field = SUBJECT_FIELD.get(metric.get("kind", ""))
        if field is None or metric["__name__"] != f"access_event_{field}{KEY_SUFFIX}":
            continue
        gate = metric.get("gate") or metric.get("device", "")
        for ms, value in zip(line["timestamps"], line["values"], strict=True):
            out.append(Passage(int(ms) * NS_PER_MS, gate, metric.get("device", ""),
                               metric.get("direction", ""), metric["kind"], int(value),
                               metric.get("result", "")))
    return sorted(out, key=lambda p: p.time_ns)


# -- who is inside now ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Presence:
    kind: str
    subject: str | int
    entries: int
    exits: int
    last_direction: str
    last_ns: int
    last_gate: str

    @property
    def inside(self) -> bool:
        """The last passage was in. Entries minus exits says the same only when the
        window began with the subject outside; a missed read (tailgating) skews the
        difference for good, while the next read puts the last direction right."""
        return self.last_direction == "in"


def presence(passages: Iterable[Passage]) -> dict[tuple[str, str | int], Presence]:
    """Per (kind, subject): entries, exits and the last passage (denied ones excluded)."""
    state: dict[tuple[str, str | int], Presence] = {}
    for p in sorted(passages, key=lambda p: p.time_ns):
        if p.result == "denied" or p.direction not in ("in", "out"):
            continue
        key = (p.kind, p.subject)
        old = state.get(key)
        entries = (old.entries if old else 0) + (p.direction == "in")
        exits = (old.exits if old else 0) + (p.direction == "out")
        state[key] = Presence(p.kind, p.subject, entries, exits, p.direction, p.time_ns,
                              p.gate)
    return state


def inside_now(passages: Iterable[Passage]) -> dict[str, set[str | int]]:
    """{"people": subjects, "vehicles": subjects} whose last passage was in."""
    out: dict[str, set[str | int]] = {"people": set(), "vehicles": set()}
    for (kind, subject), seen in presence(passages).items():
        if seen.inside:
            out["people" if kind in PEOPLE else "vehicles"].add(subject)
    return out


# -- contact tracing -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Contact:
    subject: str | int
    kind: str
    gate: str
    time_ns: int
    near_ns: int
    """The time of the traced subject's passage this contact was near."""


def contacts(traced: str | int, own: Iterable[Passage], nearby: Iterable[Passage],
             window_ns: int) -> list[Contact]:
    """Other subjects at the same gate within ``window_ns`` of one of ``own`` passages.

    ``own``: the traced subject's passages (step one); ``nearby``: passages at those gates
    around those times (step two); the traced subject itself is left out, denied attempts
    are kept (the person was there)."""
    at_gate: dict[str, list[int]] = {}
    for p in own:
        at_gate.setdefault(p.gate, []).append(p.time_ns)
    found: dict[tuple[str | int, str, int], Contact] = {}
    for p in nearby:
        if p.subject == traced:
            continue
        for t in at_gate.get(p.gate, ()):
            if abs(p.time_ns - t) <= window_ns:
                found.setdefault((p.subject, p.gate, p.time_ns),
                                 Contact(p.subject, p.kind, p.gate, p.time_ns, t))
                break
    return sorted(found.values(), key=lambda c: (c.time_ns, str(c.subject)))


def trace_influxql(run: Callable[[str], list[dict[str, Any]]], queries: Mapping[str, str],
                   subject: str, window_ns: int) -> tuple[list[Passage], list[Contact]]:
    """Contact tracing on InfluxDB 1.x: ``trace_passages`` for the subject, then one
    ``trace_nearby`` statement per passage (a window around it at its gate; InfluxQL has
    no OR between time ranges, so not one statement for all). ``run`` executes one
    statement and returns its rows."""
    own = passages_from_influxql(
        run(fill(queries["trace_passages"], influxql_literal, subject=subject)))
    nearby: list[Passage] = []
    for p in own:
        nearby += passages_from_influxql(run(fill(
            queries["trace_nearby"], influxql_literal, gate=p.gate,
            start=p.time_ns - window_ns, end=p.time_ns + window_ns)))
    return own, contacts(subject, own, nearby, window_ns)


def trace_export(series: Iterable[Mapping[str, Any]], key: int,
                 window_ns: int) -> tuple[list[Passage], list[Contact]]:
    """Contact tracing on VictoriaMetrics, from one export of the gates the subject's key
    was seen at (``trace_gates`` names them): its own passages are the samples equal to
    the key; the rest is the join of :func:`contacts`."""
    everything = passages_from_export(series)
    own = [p for p in everything if p.subject == key]
    return own, contacts(key, own, everything, window_ns)


# -- devices --------------------------------------------------------------------------


def silent_devices(rows: Iterable[Mapping[str, Any]], now_ns: int,
                   after_ns: int) -> list[tuple[str, str]]:
    """(gateway, device) whose last ``device_status`` report is older than ``after_ns``:
    their gateway stopped reporting (down, or cut off), so their state is unknown. Rows:
    the ``devices_last_report`` query (one per device, ``time`` of the last report)."""
    return sorted((row["gateway"], row["device"]) for row in rows
                  if now_ns - int(row["time"]) > after_ns)
