"""Clock sanity with injected clocks: a Pi boots in 1970 or in the past, then NTP steps."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path

import pytest

from gateway import clock
from gateway.clock import BUILD_TIME, ClockEvent, ClockMonitor, kernel_synchronised

DAY = 86400.0


class FakeClocks:
    def __init__(self, wall: float) -> None:
        self.wall = wall
        self.mono = 1000.0
        self.synced: bool | None = None

    def tick(self, seconds: float = 1.0, step: float = 0.0) -> None:
        """``seconds`` pass; the wall clock is additionally stepped by ``step``."""
        self.mono += seconds
        self.wall += seconds + step

    def monitor(self) -> tuple[ClockMonitor, list[ClockEvent]]:
        monitor = ClockMonitor(wall=lambda: self.wall, mono=lambda: self.mono,
                               sync_probe=lambda: self.synced, sync_probe_interval=5.0)
        events: list[ClockEvent] = []
        monitor.add_listener(events.append)
        return monitor, events


def test_boot_in_1970_then_ntp_sync(caplog: pytest.LogCaptureFixture) -> None:
    clocks = FakeClocks(wall=30.0)  # no RTC, no fake-hwclock: 1970-01-01
    clocks.synced = False
    monitor, events = clocks.monitor()
    with caplog.at_level(logging.INFO, logger="iotgw.clock"):
        monitor.check()
        assert monitor.state.before_build
        assert [e.kind for e in events] == ["before_build", "unsynchronised"]
        warning = next(r for r in caplog.records
                       if getattr(r, "clock_event", None) == "before_build")
        assert warning.levelno == logging.WARNING and "1970-01-01" in warning.getMessage()
        assert next(r for r in caplog.records if getattr(r, "clock_event", None)
                    == "unsynchronised").levelno == logging.WARNING

        for _ in range(3):
            clocks.tick()
            monitor.check()
        assert len(events) == 2, "nothing new while the clock runs steadily"

        real_now = BUILD_TIME + 30 * DAY
        clocks.synced = True
        clocks.tick(1.0, step=real_now - clocks.wall)
        monitor.check()
    kinds = [e.kind for e in events]
    assert kinds == ["before_build", "unsynchronised", "jump_forward", "clock_valid",
                     "synchronised"]
    jump = events[2]
    assert jump.seconds == pytest.approx(real_now - 33.0)
    assert monitor.state.jumps_forward == 1 and not monitor.state.before_build
    step_log = next(r for r in caplog.records if getattr(r, "clock_event", None) == "jump_forward")
    assert step_log.levelno == logging.INFO, "the expected step out of 1970 is no alarm"
    snap = monitor.snapshot()
    assert snap["synchronised"] is True and snap["jumps_forward"] == 1


def test_backward_jump_is_a_warning_and_small_noise_is_not_a_jump(
        caplog: pytest.LogCaptureFixture) -> None:
    clocks = FakeClocks(wall=BUILD_TIME + 100 * DAY)
    monitor, events = clocks.monitor()
    monitor.check()
    clocks.tick(1.0, step=0.3)  # NTP slew / scheduling noise
    monitor.check()
    clocks.tick(1.0, step=-0.5)
    monitor.check()
    assert events == []
    with caplog.at_level(logging.INFO, logger="iotgw.clock"):
        clocks.tick(1.0, step=-3600.0)  # fake-hwclock restored an hour-old time, or date -s
        monitor.check()
    assert [e.kind for e in events] == ["jump_backward"]
    assert events[0].seconds == pytest.approx(-3600.0)
    assert monitor.state.jumps_backward == 1 and monitor.state.last_jump == pytest.approx(-3600)
    record = next(r for r in caplog.records if getattr(r, "clock_event", None) == "jump_backward")
    assert record.levelno == logging.WARNING and "jumped BACK by 60.0min" in record.getMessage()


def test_forward_jump_of_a_valid_clock_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    clocks = FakeClocks(wall=BUILD_TIME + DAY)
    monitor, events = clocks.monitor()
    monitor.check()
    with caplog.at_level(logging.INFO, logger="iotgw.clock"):
        clocks.tick(0.5, step=2 * DAY)
        monitor.check()
    assert [e.kind for e in events] == ["jump_forward"]
    assert next(r for r in caplog.records).levelno == logging.WARNING


def test_a_failing_listener_does_not_break_the_check() -> None:
    clocks = FakeClocks(wall=10.0)
    monitor, events = clocks.monitor()

    def broken(event: ClockEvent) -> None:
        raise RuntimeError("ops bus down")

    monitor.add_listener(broken)
    monitor.check()
    assert events and monitor.state.before_build


class FakeLibc:
    """Stands in for libc: ``adjtimex`` answers ``state`` (-1: refused, as under seccomp)."""

    def __init__(self, state: int) -> None:
        self.state = state
        self.calls = 0

    def adjtimex(self, timex: object) -> int:
        self.calls += 1
        return self.state


@pytest.mark.parametrize(("state", "expected"), [
    (0, True),    # TIME_OK
    (1, True),    # TIME_INS: a leap second pending, still synchronised
    (4, True),    # TIME_WAIT
    (5, False),   # TIME_ERROR: STA_UNSYNC or STA_CLOCKERR
])
def test_kernel_sync_probe_reads_adjtimex(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          state: int, expected: bool) -> None:
    libc = FakeLibc(state)
    monkeypatch.setattr(clock.ctypes, "CDLL", lambda *a, **k: libc)
    flag = tmp_path / "synchronized"
    flag.touch()  # adjtimex answered: the timesyncd flag must not override it
    monkeypatch.setattr(clock, "TIMESYNCD_FLAG", flag)
    assert kernel_synchronised() is expected
    assert libc.calls == 1


@pytest.mark.parametrize("refused", ["returns -1", "no libc"])
def test_kernel_sync_probe_falls_back_to_timesyncd_flag_or_says_unknown(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, refused: str) -> None:
    def no_libc(*args: object, **kwargs: object) -> FakeLibc:
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(clock.ctypes, "CDLL",
                        (lambda *a, **k: FakeLibc(-1)) if refused == "returns -1" else no_libc)
    flag = tmp_path / "synchronized"
    monkeypatch.setattr(clock, "TIMESYNCD_FLAG", flag)
    assert kernel_synchronised() is None, "no adjtimex and no flag file: unknown"
    flag.touch()
    assert kernel_synchronised() is True, "systemd-timesyncd's flag file says synchronised"


def test_kernel_sync_probe_agrees_with_the_real_kernel() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    state = libc.adjtimex(ctypes.create_string_buffer(512))
    if state < 0:  # refused here (seccomp): the flag-file path is tested above
        assert kernel_synchronised() in (True, None)
    else:
        assert kernel_synchronised() is (state != 5)
