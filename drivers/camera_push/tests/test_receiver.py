"""The push receiver in a real gateway (pipeline, SQLite buffer, file sink): the issue's
example config, answers after commit, retries stored once, the plate list, refusals
that never reach the buffer, device state."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.camera_push import sim
from drivers.camera_push.tests.harness import (
    ISSUE_EXAMPLE,
    KEY,
    GatewayThread,
    config_text,
    wait_until,
)
from gateway.health.metrics import render
from gateway.health.snapshot import collect
from gateway.pseudonym import Pseudonymizer


def hashed(value: str) -> str:
    return Pseudonymizer(KEY.encode())(value)


@pytest.fixture
def issue_gateway(tmp_path: Path) -> Iterator[GatewayThread]:
    # The issue's text, verbatim but for the port (8088 may be taken on a test machine).
    path, port = config_text(tmp_path, ISSUE_EXAMPLE.replace("8088", "PORT"))
    with GatewayThread(path, port) as gw:
        yield gw


def test_issue_example_takes_plates_and_terminal_events(issue_gateway: GatewayThread) -> None:
    gw = issue_gateway
    camera = sim.PlateCamera(gw.port, "gate-cam-1", "s3cret-token")
    terminal = sim.HikvisionTerminal(gw.port, "lobby-terminal", "t2")

    async def scenario() -> list[sim.Reply]:
        return [await camera.push(camera.event("粤B12345", sec=1772583330)),
                await terminal.access_xml(501), await terminal.access_json(502),
                await terminal.access_multipart(503),
                await terminal.anpr("浙A12345", uuid="u-1", picture_bytes=20_000)]

    replies = gw.run(scenario())
    assert [r.status for r in replies] == [200] * 5
    assert replies[0].json() == {"Response_AlarmInfoPlate": {"info": "no"}}
    # the barrier camera's plate is a passage (access_event, kind=plate); the ANPR
    # camera's, which opens nothing, a sighting (vehicle_event)
    wait_until(lambda: len(gw.lines(b"vehicle_event")) == 1 and
               len(gw.lines(b"access_event")) == 4, "every event in the file sink")
    plate_line = next(x for x in gw.lines(b"access_event") if b"gate-cam-1" in x).decode()
    assert f'plate="{hashed("粤B12345")}"' in plate_line and "粤B12345" not in plate_line
    assert "gate_open=false" in plate_line and plate_line.endswith(" 1772583330000000000")
    assert ",kind=plate," in plate_line and "result=" not in plate_line  # no allow_list
    anpr = next(x for x in gw.lines(b"vehicle_event") if b"lobby-terminal" in x).decode()
    assert 'plate="浙A12345"' in anpr and "image_count=2i" in anpr
    assert "image_bytes=40000i" in anpr and "channel=1" in anpr
    terminal_lines = [x for x in gw.lines(b"access_event") if b"lobby-terminal" in x]
    serials = sorted(int(x.split(b"serial=")[1].split(b"i")[0]) for x in terminal_lines)
    assert serials == [501, 502, 503]
    assert all(b",kind=face," in x and b",result=granted," in x and b'person="1001"' in x
               for x in terminal_lines)
    assert gw.state("gate-cam-1") == "online" and gw.state("lobby-terminal") == "online"


def test_answer_comes_after_the_commit(issue_gateway: GatewayThread) -> None:
    gw = issue_gateway
    terminal = sim.HikvisionTerminal(gw.port, "lobby-terminal", "t2")
    for serial in range(10, 15):
        before = gw.committed()
        assert gw.run(terminal.access_json(serial)).status == 200
        # The pipeline counts a batch committed before it wakes the post waiting for it.
        assert gw.committed() >= before + 1


def test_a_retried_post_is_stored_once(issue_gateway: GatewayThread) -> None:
    gw = issue_gateway
    camera = sim.PlateCamera(gw.port, "gate-cam-1", "s3cret-token", retries=4)
    body = camera.event("粤B77777", sec=1772583400)
    # The first two answers are lost (the camera hangs up): it posts again, unchanged.
    reply = gw.run(camera.push(body, lose_answers=2))
    assert reply.status == 200 and camera.attempts == 3
    # ... and later once more, as a camera does after its own restart.
    assert gw.run(camera.push(body)).json() == reply.json()
    wait_until(lambda: gw.counters("gate-cam-1").get("duplicate", 0) == 3, "3 duplicates")
    time.sleep(0.3)  # a second copy would have been committed by now
    assert len([x for x in gw.lines(b"access_event") if hashed("粤B77777").encode() in x]) == 1


def test_every_event_part_of_a_multipart_post_is_stored(issue_gateway: GatewayThread) -> None:
    """Two event parts in one post: the second used to be dropped and counted as a
    picture. Each is stored under its own id; a retry of the post stores neither again."""
    gw = issue_gateway
    terminal = sim.HikvisionTerminal(gw.port, "lobby-terminal", "t2")
    parts = [("event_log", "", "application/json", json.dumps(sim.access_event(n)).encode())
             for n in (9007, 9008)]
    parts.append(("Picture", "Picture.jpg", "image/jpeg", sim.fake_jpeg(500, seed=1)))
    body = sim.multipart_body(parts, "B")
    for _ in range(2):
        assert gw.run(terminal.push(body, "multipart/form-data; boundary=B")).status == 200
    wait_until(lambda: len(gw.lines(b"access_event")) == 2, "both events stored")
    time.sleep(0.3)  # a second copy would have been committed by now
    lines = sorted(gw.lines(b"access_event"))
    assert [b"serial=9007i" in lines[0], b"serial=9008i" in lines[1]] == [True, True]
    assert len(gw.lines(b"access_event")) == 2
    assert [b"image_count=1i" in x for x in lines] == [True, False]  # the picture, once
    assert gw.counters("lobby-terminal")["duplicate"] == 2


def test_concurrent_retries_wait_for_the_same_commit(issue_gateway: GatewayThread) -> None:
    gw = issue_gateway
    terminal = sim.HikvisionTerminal(gw.port, "lobby-terminal", "t2")

    async def burst() -> list[sim.Reply]:
        import asyncio

        return await asyncio.gather(*(terminal.access_json(9000) for _ in range(8)))

    assert [r.status for r in gw.run(burst())] == [200] * 8
    time.sleep(0.3)
    assert len([x for x in gw.lines(b"access_event") if b"serial=9000i" in x]) == 1
    assert gw.counters("lobby-terminal")["duplicate"] == 7


def test_plate_list_opens_the_barrier_and_is_reloaded(tmp_path: Path) -> None:
    plates = tmp_path / "plates.txt"
    plates.write_text(f"# residents\n粤B 11111\npseudonym:{hashed('粤B22222')}\n")
    path, port = config_text(tmp_path, f"""\
http: {{listen: '127.0.0.1:PORT'}}
devices:
  - {{id: gate, driver: camera_push, profile: vzenith-plate, token: tk, allow_list: {plates},
     pseudonymize: [plate]}}
""")
    with GatewayThread(path, port) as gw:
        camera = sim.PlateCamera(port, "gate", "tk")

        def info(plate: str) -> str:
            answer = gw.run(camera.push(camera.event(plate))).json()
            return answer["Response_AlarmInfoPlate"]["info"]  # type: ignore[index]

        assert [info("粤B11111"), info("粤B22222"), info("粤B33333")] == ["ok", "ok", "no"]
        # The gatehouse edits the list; the change is picked up without a restart.
        plates.write_text("粤B33333\n")
        time.sleep(1.1)
        assert [info("粤B11111"), info("粤B33333")] == ["no", "ok"]
        receiver = gw.gateway.resources._items[("http", "receiver")][0]
        allow = receiver.endpoints["gate"].allow
        assert all("粤" not in h for h in allow._hashes), "raw plates kept in memory"
        wait_until(lambda: len(gw.lines(b"access_event")) == 5, "5 plate reads stored")
        opened = [b"gate_open=true" in x for x in gw.lines(b"access_event")]
        assert opened == [True, True, False, False, True]
        results = [x.split(b",result=")[1].split(b",")[0] for x in gw.lines(b"access_event")]
        assert results == [b"granted", b"granted", b"denied", b"denied", b"granted"]


def test_deleting_the_plate_list_revokes_it_an_unreadable_one_is_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An operator deleting the list means no plate may open the barrier any more (the
    old plates used to keep opening it); a list that is there but cannot be read (being
    rewritten, not UTF-8) keeps the last good one. Each logged once at WARNING."""
    caplog.set_level(logging.INFO, "iotgw.camera_push")
    plates = tmp_path / "plates.txt"
    plates.write_text("粤B11111\n")
    path, port = config_text(tmp_path, f"""\
http: {{listen: '127.0.0.1:PORT'}}
devices:
  - {{id: gate, driver: camera_push, profile: vzenith-plate, token: tk, allow_list: {plates}}}
""")
    with GatewayThread(path, port) as gw:
        camera = sim.PlateCamera(port, "gate", "tk")

        def info() -> str:
            answer = gw.run(camera.push(camera.event("粤B11111"))).json()
            return answer["Response_AlarmInfoPlate"]["info"]  # type: ignore[index]

        assert info() == "ok"
        plates.write_bytes(b"\xff\xfe not UTF-8\n")  # unreadable: the old list stays
        time.sleep(1.1)
        assert [info(), info()] == ["ok", "ok"]
        plates.unlink()  # deleted: revoked
        time.sleep(1.1)
        assert [info(), info()] == ["no", "no"]
        time.sleep(1.1)
        assert info() == "no"
        plates.write_text("粤B11111\n")  # back
        time.sleep(1.1)
        assert info() == "ok"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "does not exist" in w]) == 1, warnings
    assert len([w for w in warnings if "cannot read it" in w and "keeping the 1" in w]) == 1


def raw(port: int, data: bytes, source: str | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(source, 0) if source else None) as s:
        chunks: list[bytes] = []
        try:
            s.sendall(data)
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, BrokenPipeError):
            # Closing with the rest of a refused body unread makes the kernel send a
            # reset, which may overtake the 413 on the client's side, or reach it while
            # it is still sending (a CI run: reset in sendall).
            return b"".join(chunks) or b"RESET"
    return b"".join(chunks)


def status_of(reply: bytes) -> int:
    return 0 if reply == b"RESET" else int(reply.split(b" ", 2)[1])


REFUSALS = [
    # (what, request, source, status, counter or None for an unknown device)
    ("wrong token", sim.request_bytes("/push/lobby-terminal/t3", b"{}", "application/json"),
     None, 401, "bad_token"),
    ("unknown device", sim.request_bytes("/push/nobody/t2", b"{}", "application/json"),
     None, 404, None),
    ("no such path", sim.request_bytes("/other", b"{}", "application/json"), None, 404, None),
    ("source not allowed", sim.request_bytes("/push/gate-cam-1/s3cret-token", b"{}",
                                             "application/json"), "127.0.0.2", 403,
     "source_not_allowed"),
    ("oversized by length", sim.request_bytes("/push/lobby-terminal/t2", b"x" * 100,
                                              "application/json",
                                              extra={"Content-Length": str(5 * 1024**2)}),
     None, 413, "too_large"),
    ("oversized chunked", b"POST /push/lobby-terminal/t2 HTTP/1.1\r\nHost: g\r\n"
     b"Transfer-Encoding: chunked\r\nContent-Type: application/xml\r\n\r\n"
     + b"".join(b"100000\r\n" + b"<" * 0x100000 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n",
     None, 413, "too_large"),
    ("malformed JSON", sim.request_bytes("/push/lobby-terminal/t2", b'{"eventType":',
                                         "application/json"), None, 400, "invalid_json"),
    ("not an alert", sim.request_bytes("/push/gate-cam-1/s3cret-token", b'{"a": 1}',
                                       "application/json"), None, 400, "invalid_payload"),
    ("picture only", sim.request_bytes("/push/lobby-terminal/t2", b"\xff\xd8\xff\xd9",
                                       "image/jpeg"), None, 415, "unsupported_media_type"),
    ("gzip", sim.request_bytes("/push/lobby-terminal/t2", b"\x1f\x8b", "application/json",
                               extra={"Content-Encoding": "gzip"}), None, 415,
     "content_encoding"),
    ("GET", sim.request_bytes("/push/lobby-terminal/t2", b"", "application/json",
                              method="GET"), None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize(("what", "request_", "source", "status", "counter"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_refused_posts_never_reach_the_buffer(
        issue_gateway: GatewayThread, caplog: pytest.LogCaptureFixture, what: str,
        request_: bytes, source: str | None, status: int, counter: str | None) -> None:
    gw = issue_gateway
    accepted = {status, 0} if what == "oversized chunked" else {status}
    for _ in range(3):
        assert status_of(raw(gw.port, request_, source)) in accepted
    device = "gate-cam-1" if b"gate-cam-1" in request_ else "lobby-terminal"
    if counter is not None:
        wait_until(lambda: gw.counters(device).get(counter) == 3, f"3 counted {counter}")
    receiver = gw.gateway.resources._items[("http", "receiver")][0]
    assert sum(receiver.counters.values()) == 3
    # Counted where operators look, also when no device owns the refusal (unknown id).
    snap = gw.run(collect(gw.gateway))
    assert snap["connections"]["http-receiver"] == dict(receiver.counters)
    metrics = render(snap).decode()
    assert all(f'iotgw_connection_events_total{{connection="http-receiver",kind="{kind}"}} '
               f'{float(n)}' in metrics for kind, n in receiver.counters.items()), metrics
    # still serving, and nothing refused was stored
    terminal = sim.HikvisionTerminal(gw.port, "lobby-terminal", "t2")
    assert gw.run(terminal.access_json(77)).status == 200
    wait_until(lambda: len(gw.lines()) >= 1, "the good event stored")
    assert [x for x in gw.lines() if b"serial=77i" not in x] == []
    refusals = [r for r in caplog.records if "refused with" in r.getMessage()]
    assert len(refusals) == 1, "logged once per kind"
    text = "\n".join(r.getMessage() + str(getattr(r, "args", "")) for r in caplog.records)
    assert "s3cret-token" not in text and "/t2" not in text and "t3" not in text
    if status in (400, 413, 415) and counter is not None:
        assert len(gw.dead) == 3 and all(d.source == f"/push/{device}/***" for d in gw.dead)
        if device == "gate-cam-1":  # pseudonymised fields: the raw payload stays inside
            assert all(d.payload == b"" for d in gw.dead)


def test_device_state_goes_offline_after_silence(tmp_path: Path) -> None:
    path, port = config_text(tmp_path, """\
http: {listen: '127.0.0.1:PORT'}
devices:
  - {id: term, driver: camera_push, profile: hikvision-isapi, token: tk, offline_after: 1s}
""")
    with GatewayThread(path, port) as gw:
        assert gw.state("term") == "starting"
        heartbeat = (b"<EventNotificationAlert><eventType>heartBeat</eventType>"
                     b"</EventNotificationAlert>")
        reply = gw.run(sim.post(port, "/push/term/tk", heartbeat, "application/xml"))
        assert reply.status == 200
        assert gw.state("term") == "online"
        assert gw.gateway.devices["term"].status.last_seen is not None
        wait_until(lambda: gw.state("term") == "offline", "offline after 1 s of silence")
        assert ("term", "offline", "no post for 1s") in gw.states
        assert gw.lines() == [], "a heartbeat stores nothing"


def test_generic_json_device(tmp_path: Path) -> None:
    path, port = config_text(tmp_path, """\
http: {listen: '127.0.0.1:PORT'}
devices:
  - id: bay
    driver: camera_push
    profile: generic-json
    token: tk
    mapping: {measurement: parking, fields: {occupied: $.occupied}, event_id: $.seq}
""")
    with GatewayThread(path, port) as gw:
        for seq in (1, 2, 2):
            body = json.dumps({"seq": seq, "occupied": seq == 1}).encode()
            assert gw.run(sim.post(port, "/push/bay/tk", body, "application/json")).status == 200
        wait_until(lambda: len(gw.lines(b"parking")) == 2, "two events")
        assert gw.counters("bay")["duplicate"] == 1
