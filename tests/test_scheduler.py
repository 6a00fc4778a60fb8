"""BusScheduler (EDF turns, inter-frame silence, cancellation) and PollTimer (grid, backoff)."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from gateway.driver import DeviceContext, DeviceState
from gateway.scheduler import BusClosed, BusScheduler, DeviceHealth, PollTimer


async def _hold(bus: BusScheduler, device: str, deadline: float, order: list[str],
                hold: float = 0.0) -> None:
    async with bus.turn(device, deadline):
        order.append(device)
        if hold:
            await asyncio.sleep(hold)


async def test_waiters_served_earliest_deadline_first() -> None:
    bus = BusScheduler("a")
    order: list[str] = []
    release = asyncio.Event()

    async def owner() -> None:
        async with bus.turn("owner", 0.0):
            order.append("owner")
            await release.wait()

    first = asyncio.create_task(owner())
    await asyncio.sleep(0)
    now = time.monotonic()
    deadlines = {"d-late": now + 30, "d-first": now + 1, "d-mid": now + 5, "d-second": now + 2}
    tasks = [asyncio.create_task(_hold(bus, d, t, order)) for d, t in deadlines.items()]
    await asyncio.sleep(0.01)
    assert bus.queued == 4
    release.set()
    await asyncio.gather(first, *tasks)
    assert order == ["owner", "d-first", "d-second", "d-mid", "d-late"]
    assert bus.stats["d-late"].waits == 1 and bus.stats["owner"].waits == 0
    assert all(s.turns == 1 for s in bus.stats.values())


async def test_equal_deadlines_are_fifo_and_newcomers_do_not_overtake() -> None:
    bus = BusScheduler("a")
    order: list[str] = []
    t = time.monotonic() + 10
    tasks = [asyncio.create_task(_hold(bus, f"d{i}", t, order, hold=0.002)) for i in range(5)]
    await asyncio.sleep(0.001)
    # A newcomer with a later deadline arrives while others queue: it goes last.
    tasks.append(asyncio.create_task(_hold(bus, "late", t + 1, order)))
    await asyncio.gather(*tasks)
    assert order == ["d0", "d1", "d2", "d3", "d4", "late"]


async def test_inter_frame_delay_separates_turns() -> None:
    """Gaps between turns with a delay are at least the delay and clearly longer than
    the gaps of the same run without one (relative, not absolute, timing)."""
    async def gaps(delay: float) -> list[float]:
        bus = BusScheduler("a", inter_frame_delay=delay)
        marks: list[tuple[float, float]] = []

        async def one(i: int) -> None:
            async with bus.turn(f"d{i % 3}", time.monotonic()):
                begin = time.monotonic()
                await asyncio.sleep(0)
                marks.append((begin, time.monotonic()))

        await asyncio.gather(*(one(i) for i in range(12)))
        return [b[0] - a[1] for a, b in itertools.pairwise(marks)]

    with_delay = await gaps(0.02)
    without = await gaps(0.0)
    assert min(with_delay) >= 0.02
    assert min(with_delay) > 2 * max(without)


async def test_delay_applies_between_turns_of_the_same_device() -> None:
    bus = BusScheduler("a", inter_frame_delay=0.015)
    ends: list[float] = []
    starts: list[float] = []
    for _ in range(3):
        async with bus.turn("d", time.monotonic()):
            starts.append(time.monotonic())
        ends.append(time.monotonic())
    assert all(s - e >= 0.015 for e, s in zip(ends, starts[1:], strict=False))


async def test_cancelled_waiter_does_not_leak_the_bus() -> None:
    bus = BusScheduler("a")
    order: list[str] = []
    release = asyncio.Event()

    async def owner() -> None:
        async with bus.turn("owner", 0.0):
            await release.wait()

    own = asyncio.create_task(owner())
    await asyncio.sleep(0)
    doomed = asyncio.create_task(_hold(bus, "doomed", 1.0, order))
    other = asyncio.create_task(_hold(bus, "other", 2.0, order))
    await asyncio.sleep(0.01)
    doomed.cancel()
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(asyncio.gather(own, other), 2)
    assert doomed.cancelled()
    assert order == ["other"]
    await asyncio.wait_for(_hold(bus, "after", 0.0, order), 1)  # bus is free again


async def test_cancel_in_the_step_the_turn_is_granted_passes_the_bus_on() -> None:
    bus = BusScheduler("a")
    order: list[str] = []
    cm = bus.turn("owner", 0.0)
    await cm.__aenter__()
    granted = asyncio.create_task(_hold(bus, "granted", 1.0, order))
    nxt = asyncio.create_task(_hold(bus, "next", 2.0, order))
    await asyncio.sleep(0.01)
    await cm.__aexit__(None, None, None)  # grants "granted" ...
    granted.cancel()                        # ... which is cancelled before it runs
    await asyncio.wait_for(nxt, 2)  # its turn, and releasing it, raise nothing
    assert order == ["next"]
    assert granted.cancelled()


async def test_cancel_while_holding_releases() -> None:
    bus = BusScheduler("a")
    order: list[str] = []
    holder = asyncio.create_task(_hold(bus, "holder", 0.0, order, hold=10))
    await asyncio.sleep(0.01)
    holder.cancel()
    await asyncio.wait_for(_hold(bus, "next", 0.0, order), 1)
    assert order == ["holder", "next"]


async def test_close_fails_waiters_and_refuses_new_turns() -> None:
    bus = BusScheduler("a")
    release = asyncio.Event()

    async def owner() -> None:
        async with bus.turn("owner", 0.0):
            await release.wait()

    own = asyncio.create_task(owner())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(_hold(bus, "w", 1.0, []))
    await asyncio.sleep(0.01)
    await bus.close()
    with pytest.raises(BusClosed):
        await waiter
    release.set()
    await own
    with pytest.raises(BusClosed):
        await _hold(bus, "new", 0.0, [])


async def test_late_turns_are_counted() -> None:
    bus = BusScheduler("a")
    async with bus.turn("d", time.monotonic() - 1):
        pass
    async with bus.turn("d", time.monotonic() + 60):
        pass
    assert bus.stats["d"].late == 1 and bus.stats["d"].turns == 2


def test_poll_timer_grid_is_drift_free_and_skips_missed_slots() -> None:
    timer = PollTimer(10.0, start=100.0)
    assert timer.due == 100.0
    assert timer.success(now=101.3) == 110.0   # poll took 1.3 s: no drift
    assert timer.success(now=110.5) == 120.0
    assert timer.success(now=145.0) == 150.0   # slots 130 and 140 were missed: skipped
    assert timer.missed == 2
    assert timer.success(now=150.0) == 160.0   # exactly on a slot: the next one


def test_poll_timer_backoff_progression_and_recovery() -> None:
    timer = PollTimer(1.0, backoff_base=2.0, backoff_max=30.0, start=0.0)
    now = 0.0
    delays = []
    for _ in range(7):
        due = timer.failure(now=now)
        delays.append(due - now)
        now = due
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert timer.deadline == timer.due + 30.0
    assert timer.success(now=now + 0.1) == now + 1.0   # back on a 1 s grid
    assert timer.failures == 0 and timer.deadline == timer.due + 1.0


def test_poll_timer_backoff_never_faster_than_interval() -> None:
    timer = PollTimer(10.0, backoff_base=1.0, backoff_max=60.0, start=0.0)
    assert timer.failure(now=0.0) == 10.0
    assert timer.failure(now=10.0) == 20.0
    assert timer.failure(now=20.0) == 30.0
    assert timer.failure(now=30.0) == 40.0   # 1 * 2**3 = 8 s, still below the interval
    assert timer.failure(now=40.0) == 56.0   # 16 s


def test_device_health_states_and_counters() -> None:
    async def emit(_d: str, _r: object) -> None: ...

    seen: list[tuple[DeviceState, str | None]] = []
    ctx = DeviceContext("m1", emit, lambda _id, s: seen.append((s.state, s.last_error)))
    health = DeviceHealth(ctx, offline_after=2)
    health.ok()
    health.failed("timeout", "no answer")   # first failure while online: not yet offline
    assert ctx.status.state is DeviceState.ONLINE
    health.failed("timeout", "no answer")
    assert ctx.status.state is DeviceState.OFFLINE
    assert ctx.status.last_error == "timeout: no answer"
    health.failed("exception_reply", "illegal address")
    assert ctx.status.state is DeviceState.ERROR
    health.ok()
    assert ctx.status.state is DeviceState.ONLINE and ctx.status.last_error is None
    assert ctx.status.counters == {"timeout": 2, "exception_reply": 1}
    assert [s for s, _ in seen] == [DeviceState.ONLINE, DeviceState.OFFLINE,
                                     DeviceState.ERROR, DeviceState.ONLINE]
