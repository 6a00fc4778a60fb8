"""A malformed part from a terminal whose device pseudonymises cards must not carry the
raw card number out of the process. Found by the outside probe: a Hikvision access event
with an unreadable dateTime was dead-lettered (ops bus ``errors`` topic) with the whole
part, ``cardNo`` and ``employeeNoString`` in clear, although the device had
``pseudonymize: [card, employee]`` (now ``[card, person, holder]``; camera_push
withholds such payloads; event_stream did not). Real gateway, real Hikvision simulator
on loopback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from drivers.event_stream.sim import HikvisionSim, part
from drivers.event_stream.tests.harness import running, write_config
from gateway.plugin import DeadLetter

CARD, EMPLOYEE = "9988776655", "E-4711"


def bad_access_part(sim: HikvisionSim, serial: int) -> bytes:
    record = {"major": 5, "minor": 1, "time": "yesterday", "cardNo": CARD, "cardReaderNo": 1,
              "doorNo": 1, "employeeNoString": EMPLOYEE, "serialNo": serial,
              "currentVerifyMode": "card", "name": "someone"}
    body = json.loads(sim.access_part({**record, "time": "2026-01-01T00:00:00+08:00"})
                      .split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n"))
    body["dateTime"] = "yesterday"  # unreadable: BadPart(bad_time)
    return part(json.dumps(body).encode(), "application/json", sim.BOUNDARY)


@pytest.mark.parametrize("private", [True, False])
async def test_a_bad_part_of_a_private_device_is_dead_lettered_without_payload(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, private: bool) -> None:
    caplog.set_level(logging.DEBUG)
    sim = HikvisionSim(keepalive=0.2)
    await sim.start()
    key = tmp_path / "privacy.key"
    key.write_text("k" * 32)
    key.chmod(0o600)
    hide = ", pseudonymize: [card, person, holder]" if private else ""
    config = write_config(tmp_path / "gw.yaml", (
        f"- {{id: term, driver: event_stream, profile: hikvision, host: 127.0.0.1, "
        f"port: {sim.port}, username: admin, password: hik-pass, silence: 5s{hide}}}\n"),
        extra=f"privacy: {{key_file: {key}}}\n")
    letters: list[DeadLetter] = []
    try:
        async with running(config) as gw:
            gw.gateway.add_dead_letter_listener(letters.append)
            await gw.until(lambda: sim.open_streams == 1, what="the stream")
            sim.broadcast(bad_access_part(sim, 77))
            await gw.until(lambda: letters, what="the dead letter")
            assert gw.counters("term").get("bad_time") == 1
    finally:
        await sim.stop()
    (letter,) = letters
    if private:
        everything = repr(letter).encode() + caplog.text.encode()
        assert CARD.encode() not in everything and EMPLOYEE.encode() not in everything
        assert letter.payload == b""
        assert "withheld" in letter.reason
    else:  # a device that does not pseudonymise keeps the payload for diagnosis
        assert CARD.encode() in letter.payload
