"""Coalescing points into requests, and splitting around rejected holes."""

from __future__ import annotations

from drivers.modbus.planner import Limits, ReadPlan, coalesce, split
from drivers.modbus.points import Point


def regs(*spec: tuple[str, int, str]) -> list[Point]:
    return [Point(name=n, address=a, type=t) for n, a, t in spec]  # type: ignore[arg-type]


def test_contiguous_points_make_one_request_per_table() -> None:
    points = regs(("a", 0, "float32"), ("b", 2, "float32"), ("c", 4, "uint16"))
    points.append(Point(name="k", table="coil", address=3))
    points.append(Point(name="j", table="coil", address=20))
    points.append(Point(name="m", table="coil", address=38))
    plan = coalesce(points, Limits())   # max_gap 16: 3..20 joined, 38 is 17 past the end
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
