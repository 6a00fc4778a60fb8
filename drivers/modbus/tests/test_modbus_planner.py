"""Coalescing points into requests, and splitting around rejected holes."""

from __future__ import annotations

import pytest

from drivers.modbus.planner import TCP, Limits, ReadPlan, WireCost, coalesce, split
from drivers.modbus.points import Point
from drivers.modbus.profiles import load_profile


def regs(*spec: tuple[str, int, str]) -> list[Point]:
    return [Point(name=n, address=a, type=t) for n, a, t in spec]


def test_contiguous_points_make_one_request_per_table() -> None:
    points = regs(("a", 0, "float32"), ("b", 2, "float32"), ("c", 4, "uint16"))
    points.append(Point(name="k", table="coil", address=3))
    points.append(Point(name="j", table="coil", address=20))
    points.append(Point(name="m", table="coil", address=38))
    plan = coalesce(points, Limits(max_gap=16))  # 3..20 joined, 38 is 17 past the end
    assert [(r.table, r.start, r.count) for r in plan] == [
        ("coil", 3, 18), ("coil", 38, 1), ("holding", 0, 5)]


def test_gap_limit_and_register_limit() -> None:
    points = regs(("a", 0, "uint16"), ("b", 10, "uint16"), ("c", 30, "uint16"))
    assert [(r.start, r.count) for r in coalesce(points, Limits(max_gap=9))] == [
        (0, 11), (30, 1)]
    assert [(r.start, r.count) for r in coalesce(points, Limits(max_gap=8))] == [
        (0, 1), (10, 1), (30, 1)]
    many = [Point(name=f"p{i}", address=2 * i, type="float32") for i in range(100)]
    plan = coalesce(many, Limits())
    assert [(r.start, r.count) for r in plan] == [(0, 124), (124, 76)]  # no float split
    assert [r.count for r in coalesce(many, Limits(max_registers=40))] == [40] * 5


def test_bits_share_a_register() -> None:
    points = [Point(name=f"b{i}", address=7, type="bit", bit=i) for i in range(16)]
    (request,) = coalesce(points, Limits())
    assert (request.start, request.count, len(request.points)) == (7, 1, 16)


def test_split_cuts_at_the_widest_gap() -> None:
    points = regs(("a", 0, "uint16"), ("b", 10, "uint16"), ("c", 11, "uint16"),
                  ("d", 12, "uint16"))
    (request,) = coalesce(points, Limits())
    left, right = split(request)
    assert [p.name for p in left.points] == ["a"]
    assert (right.start, right.count) == (10, 3)


def test_reject_isolates_a_bad_point_and_remembers() -> None:
    points = regs(("a", 0, "uint16"), ("b", 1, "uint16"), ("c", 2, "uint16"),
                  ("d", 3, "uint16"))
    plan = ReadPlan(points, Limits())
    (whole,) = plan.requests
    halves = plan.reject(whole, "exception 2")
    assert [[p.name for p in h.points] for h in halves] == [["a", "b"], ["c", "d"]]
    quarter = plan.reject(halves[1], "exception 2")
    assert plan.reject(quarter[0], "exception 2") == []
    assert plan.bad == {"c": "exception 2"}
    assert [[p.name for p in r.points] for r in plan.requests] == [["a", "b"], ["d"]]
    assert plan.splits == 2


def test_restore_replans_without_the_still_bad_points() -> None:
    points = regs(("a", 0, "uint16"), ("b", 1, "uint16"), ("c", 2, "uint16"),
                  ("d", 3, "uint16"))
    plan = ReadPlan(points, Limits())
    (whole,) = plan.requests
    left, right = plan.reject(whole, "exception 2")
    assert plan.reject(plan.reject(left, "exception 2")[0], "exception 2") == []
    assert plan.reject(plan.reject(right, "exception 2")[1], "exception 2") == []
    assert [p.name for p in plan.bad_points()] == ["a", "d"]
    plan.restore(["d"])  # d answers again: b..d are one read again, a stays out
    assert plan.bad == {"a": "exception 2"}
    assert [(r.start, r.count) for r in plan.requests] == [(1, 3)]
    plan.restore(["a"])
    assert [(r.start, r.count) for r in plan.requests] == [(0, 4)] and plan.bad == {}


SDM630_FIVE = ("voltage_l1", "current_l1", "power_total", "frequency", "energy_import")
"""The benchmark workload's five float32 points, 0x0000..0x0049."""

RTU_9600 = WireCost.serial(9600)  # 8N1: 1.04 ms a byte; one request ~26 ms, 12 registers
RTU_9600_8E1 = WireCost.serial(9600, bits_per_char=11)
RTU_115200 = WireCost.serial(115200)  # silence fixed at 1.75 ms: one request ~9.6 ms


def sdm630(*names: str) -> list[Point]:
    return [p for p in load_profile("eastron-sdm630").points if p.name in names]


@pytest.mark.parametrize(("case", "points", "limits", "expected"), [
    ("sdm630 five points, TCP: one read", sdm630(*SDM630_FIVE), Limits(cost=TCP),
     [("input", 0x0000, 0x004A)]),
    ("sdm630 five points, today's fixed gap 16: two", sdm630(*SDM630_FIVE),
     Limits(max_gap=16), [("input", 0x0000, 8), ("input", 0x0034, 0x0016)]),
    ("sdm630 five points, RTU 9600: the 44-register hole costs more than a request",
     sdm630(*SDM630_FIVE), Limits(cost=RTU_9600),
     [("input", 0x0000, 8), ("input", 0x0034, 2), ("input", 0x0046, 4)]),
    ("TCP: any gap that fits one read", regs(("a", 0, "uint16"), ("b", 124, "uint16")),
     Limits(), [("holding", 0, 125)]),
    ("TCP: but not past 125 registers", regs(("a", 0, "uint16"), ("b", 125, "uint16")),
     Limits(), [("holding", 0, 1), ("holding", 125, 1)]),
    ("TCP: nor past the device's max_registers",
     regs(("a", 0, "uint16"), ("b", 50, "uint16")), Limits(max_registers=50),
     [("holding", 0, 1), ("holding", 50, 1)]),
    ("TCP coils: any gap within 2000 bits",
     [Point(name="k", table="coil", address=0), Point(name="j", table="coil", address=1999)],
     Limits(), [("coil", 0, 2000)]),
    ("RTU 9600: a 12-register gap (25.0 ms) is cheaper than a request (25.8 ms)",
     regs(("a", 0, "uint16"), ("b", 13, "uint16")), Limits(cost=RTU_9600),
     [("holding", 0, 14)]),
    ("RTU 9600: a 13-register gap (27.1 ms) is not",
     regs(("a", 0, "uint16"), ("b", 14, "uint16")), Limits(cost=RTU_9600),
     [("holding", 0, 1), ("holding", 14, 1)]),
    ("RTU 9600: a small gap merges", regs(("a", 0, "float32"), ("b", 4, "float32")),
     Limits(cost=RTU_9600), [("holding", 0, 6)]),
    ("RTU 9600: a large gap does not", regs(("a", 0, "float32"), ("b", 40, "float32")),
     Limits(cost=RTU_9600), [("holding", 0, 2), ("holding", 40, 2)]),
    ("RTU 9600 8E1: still 12 registers (both sides scale with the character time)",
     regs(("a", 0, "uint16"), ("b", 13, "uint16"), ("c", 27, "uint16")),
     Limits(cost=RTU_9600_8E1), [("holding", 0, 14), ("holding", 27, 1)]),
    ("RTU 115200: bytes are cheap, the silences and turnaround are not: 55 registers",
     regs(("a", 0, "uint16"), ("b", 56, "uint16"), ("c", 113, "uint16")),
     Limits(cost=RTU_115200), [("holding", 0, 57), ("holding", 113, 1)]),
    ("RTU: a slow device (50 ms turnaround) makes bigger gaps worth reading",
     regs(("a", 0, "uint16"), ("b", 14, "uint16"), ("c", 45, "uint16")),
     Limits(cost=WireCost.serial(9600, turnaround=0.050)), [("holding", 0, 46)]),
    ("RTU coils: 8 bits a byte, so 100 unused coils are cheap",
     [Point(name="k", table="coil", address=0), Point(name="j", table="coil", address=101)],
     Limits(cost=RTU_9600), [("coil", 0, 102)]),
    ("RTU coils: 200 are not",
     [Point(name="k", table="coil", address=0), Point(name="j", table="coil", address=201)],
     Limits(cost=RTU_9600), [("coil", 0, 1), ("coil", 201, 1)]),
    ("max_gap overrides the cost model on TCP",
     regs(("a", 0, "uint16"), ("b", 10, "uint16")), Limits(max_gap=8),
     [("holding", 0, 1), ("holding", 10, 1)]),
    ("max_gap overrides the cost model on RTU too",
     regs(("a", 0, "uint16"), ("b", 40, "uint16")), Limits(max_gap=40, cost=RTU_9600),
     [("holding", 0, 41)]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_requests_follow_the_transport_cost(case: str, points: list[Point], limits: Limits,
                                            expected: list[tuple[str, int, int]]) -> None:
    assert [(r.table, r.start, r.count) for r in coalesce(points, limits)] == expected


def test_rtu_request_cost_is_frames_silences_and_turnaround() -> None:
    # 8N1 at 9600: 10/9600 s a byte; 8 + 5 bytes of frames, 2 x 3.5 characters, 5 ms.
    char = 10 / 9600
    assert RTU_9600.request_seconds == pytest.approx(13 * char + 7 * char + 0.005)
    assert RTU_9600.gap_seconds(12, bits=False) == pytest.approx(24 * char)
    assert RTU_115200.silence == pytest.approx(0.00175)
    assert TCP.merges(124, bits=False) and TCP.merges(1999, bits=True)


def test_hole_isolation_still_works_on_a_tcp_merged_read() -> None:
    """TCP merges the five SDM630 points into one read; a device that rejects the hole
    0x000A..0x0033 gets it split off at the widest gap, as before."""
    plan = ReadPlan(sdm630(*SDM630_FIVE), Limits())
    (whole,) = plan.requests
    left, right = plan.reject(whole, "exception 2")
    assert [p.name for p in left.points] == ["voltage_l1", "current_l1"]
    assert [p.name for p in right.points] == ["power_total", "frequency", "energy_import"]
    assert [(r.start, r.count) for r in plan.requests] == [(0, 8), (0x34, 0x16)]


@pytest.mark.parametrize(("bus", "turnaround", "expected"), [
    ({"type": "tcp", "host": "127.0.0.1"}, None, [(0, 0x4A)]),
    ({"type": "serial", "port": "/dev/ttyNONE", "baudrate": 9600}, None,
     [(0, 8), (0x34, 2), (0x46, 4)]),
    # RTU over TCP (a serial device server) still pays the line's character times.
    ({"type": "serial", "port": "socket://127.0.0.1:4001", "baudrate": 9600}, None,
     [(0, 8), (0x34, 2), (0x46, 4)]),
    # A device that takes 50 ms to answer: the 16-register gap to 0x46 is cheaper.
    ({"type": "serial", "port": "/dev/ttyNONE", "baudrate": 9600}, 0.05,
     [(0, 8), (0x34, 0x16)]),
    # At 115200 a request costs ~9.6 ms, a 44-register hole 7.6 ms: one read.
    ({"type": "serial", "port": "/dev/ttyNONE", "baudrate": 115200}, None, [(0, 0x4A)]),
])
def test_driver_prices_its_bus(bus: dict, turnaround: float | None,
                               expected: list[tuple[int, int]]) -> None:
    """The driver plans with its bus's transport, baud rate and format (not started)."""
    from drivers.modbus.tests.harness import Fleet
    from gateway.config.models import SerialBus, TcpBus

    model = TcpBus if bus["type"] == "tcp" else SerialBus
    fleet = Fleet({"b": model.model_validate(bus)})
    profile = load_profile("eastron-sdm630")
    off = {p.name: {"enabled": False} for p in profile.points if p.name not in SDM630_FIVE}
    extra = {} if turnaround is None else {"turnaround": turnaround}
    driver = fleet.add(id="m", bus="b", unit=1, profile="eastron-sdm630", overrides=off,
                       **extra)
    assert [(r.start, r.count) for r in driver.plan.requests] == expected
