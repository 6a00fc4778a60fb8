"""Parts and framing: the data-driven cases in testcases/ (built from the vendors'
published formats and the failures other integrations hit), and hostile input that must
come out as counted problems, never as an exception."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from drivers.event_stream.events import PARSERS, BadPart
from drivers.event_stream.multipart import Malformed, MultipartSplitter, Part, boundary_of
from drivers.event_stream.sim import part
from gateway.config.yamlsource import parse_yaml

CASES = sorted(p for p in (Path(__file__).parent.parent / "testcases").iterdir() if p.is_dir())


def load_case(case: Path) -> tuple[dict[str, Any], bytes]:
    doc, problems = parse_yaml((case / "expected.yaml").read_text(encoding="utf-8"), environ={})
    assert doc is not None and not problems, problems
    body = next(case.glob("part.*")).read_bytes()
    return dict(doc.data), body


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Path) -> None:
    expected, body = load_case(case)
    item = Part({"content-type": expected["content_type"]}, body)
    parse = PARSERS[expected["profile"]]
    if "error" in expected:
        with pytest.raises(BadPart) as caught:
            parse(item)
        assert caught.value.kind == expected["error"]
        return
    events = parse(item)
    assert len(events) == len(expected["events"])
    for event, want in zip(events, expected["events"], strict=True):
        got = dataclasses.asdict(event)
        for key, value in want.items():
            assert got[key] == value, f"{case.name}: {key}: {got[key]!r} != {value!r}"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_survives_the_framing(case: Path) -> None:
    """Each case framed as its device frames it, fed a byte at a time and then in one
    piece, with and without Content-Length: the same body comes out."""
    expected, body = load_case(case)
    boundary = "myboundary" if expected["profile"] == "dahua" else "boundary"
    for length in (True, False):
        stream = part(body, expected["content_type"], boundary, length) * 2
        for step in (1, len(stream)):
            splitter = MultipartSplitter(boundary)
            items = [i for k in range(0, len(stream), step)
                     for i in splitter.feed(stream[k:k + step])]
            if not length:
                items += splitter.feed(f"--{boundary}\r\n".encode())
            parts = [i for i in items if isinstance(i, Part)]
            # Line ends around a body are the framing's, not the event's (the parsers
            # strip whitespace): the content comes out whole.
            assert [p.body.strip() for p in parts] == [body.strip()] * 2, items
            assert not [i for i in items if isinstance(i, Malformed)]


def test_boundary_header_forms() -> None:
    assert boundary_of("multipart/x-mixed-replace; boundary=myboundary") == "myboundary"
    assert boundary_of('multipart/mixed; charset=utf-8; BOUNDARY="boundary"') == "boundary"
    assert boundary_of("multipart/mixed") is None
    assert boundary_of(None) is None


def test_framing_faults_are_named() -> None:
    good = part(b"Heartbeat", "text/plain", "myboundary")
    splitter = MultipartSplitter("myboundary", max_part=1000)
    items = splitter.feed(
        b"preamble junk\r\n" + good
        + b"--myboundary\r\nContent-Length: 100\r\n\r\nshort\r\n" + good     # length lies
        + b"--myboundary\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000 + b"\r\n"  # too big
        + b"--myboundary\r\nno colon here\r\n\r\nbody\r\n" + good
        + b"\r\nstray bytes\r\n" + good)
    kinds = [i.kind for i in items if isinstance(i, Malformed)]
    # the body of the part with bad headers is skipped as garbage up to the next delimiter
    assert kinds == ["garbage", "bad_length", "part_too_large", "bad_headers", "garbage",
                     "garbage"]
    assert [i.body for i in items if isinstance(i, Part)] == [b"Heartbeat", b"short",
                                                              b"Heartbeat", b"Heartbeat",
                                                              b"Heartbeat"]


def test_announced_boundary_differs_from_the_one_used() -> None:
    splitter = MultipartSplitter("announced")
    items = splitter.feed(part(b"Heartbeat", "text/plain", "used") * 2)
    assert [i.body for i in items if isinstance(i, Part)] == [b"Heartbeat", b"Heartbeat"]


def test_closing_delimiter_ends_the_stream() -> None:
    splitter = MultipartSplitter("b")
    splitter.feed(part(b"x", "text/plain", "b") + b"--b--\r\n")
    assert splitter.finished


# -- hostile input ---------------------------------------------------------------------

GOOD = [part(b"Heartbeat", "text/plain", "myboundary"),
        part(b"Code=VideoMotion;action=Start;index=0", "text/plain", "myboundary")]


@seed(13)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(noise=st.lists(st.binary(max_size=300), max_size=8), cuts=st.lists(
    st.integers(min_value=1, max_value=97), min_size=1, max_size=20))
def test_noise_between_good_parts_never_raises_and_good_parts_survive(
        noise: list[bytes], cuts: list[int]) -> None:
    """Garbage of any shape between well-framed parts: the splitter never raises, and
    every good part that follows a clean delimiter line comes out intact."""
    stream = b""
    for chunk in noise:
        stream += GOOD[len(stream) % 2] + b"\r\n" + chunk.replace(b"--myboundary", b"") + \
            b"\r\n"
    stream += GOOD[0]
    splitter = MultipartSplitter("myboundary", max_part=4096)
    items: list[Part | Malformed] = []
    at, k = 0, 0
    while at < len(stream):
        step = cuts[k % len(cuts)]
        items += splitter.feed(stream[at:at + step])
        at, k = at + step, k + 1
    bodies = [i.body for i in items if isinstance(i, Part)]
    # The last good part is always recovered whole, whatever came before it.
    assert b"Heartbeat" in bodies
    for body in bodies:
        for parse in PARSERS.values():
            try:
                parse(Part({"content-type": "text/plain"}, body))
            except BadPart:
                pass


@seed(14)
@settings(max_examples=500, deadline=None)
@given(body=st.binary(max_size=600), kind=st.sampled_from(
    ["text/plain", "application/xml", "application/json", "image/jpeg", ""]))
def test_any_body_is_an_event_list_or_a_bad_part(body: bytes, kind: str) -> None:
    for parse in PARSERS.values():
        try:
            events = parse(Part({"content-type": kind}, body))
        except BadPart as exc:
            assert exc.kind
        else:
            assert isinstance(events, list)


@seed(15)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_vendor_parts_never_escape_as_exceptions(data: st.DataObject) -> None:
    """Real parts (the testcases) with bytes flipped, cut or repeated."""
    case = data.draw(st.sampled_from(CASES))
    expected, body = load_case(case)
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    mutated = bytearray(body)
    for _ in range(data.draw(st.integers(1, 6))):
        if not mutated:
            break
        at = rng.randrange(len(mutated))
        choice = rng.randrange(3)
        if choice == 0:
            mutated[at] = rng.randrange(256)
        elif choice == 1:
            del mutated[at:at + rng.randrange(1, 20)]
        else:
            mutated[at:at] = mutated[at:at + rng.randrange(1, 30)]
    try:
        PARSERS[expected["profile"]](Part({"content-type": expected["content_type"]},
                                          bytes(mutated)))
    except BadPart:
        pass
