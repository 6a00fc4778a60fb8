"""Which requests read a device's points: as few as the protocol and the device allow.

On a 9600-baud line a request costs ~10 ms of silence and headers before any data, so
reading 40 meter values with 3 requests instead of 40 is the difference between polling
a meter every second and every ten. Devices have limits the protocol does not: some
reject long reads (``max_registers``) or reads that span unmapped addresses
(``max_gap``); when a device rejects a coalesced read anyway, :class:`ReadPlan` splits it
where the gap is largest, keeps what works and remembers that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from drivers.modbus.points import Point

PROTOCOL_MAX_REGISTERS = 125
PROTOCOL_MAX_BITS = 2000
TABLE_ORDER = ("coil", "discrete", "holding", "input")


@dataclass(frozen=True)
class Limits:
    max_registers: int = PROTOCOL_MAX_REGISTERS
    max_bits: int = PROTOCOL_MAX_BITS
    max_gap: int = 16
    """Unused registers (or bits) a read may span between two points."""

    def span(self, table: str) -> int:
        bits = table in ("coil", "discrete")
        return min(self.max_bits, PROTOCOL_MAX_BITS) if bits else min(
            self.max_registers, PROTOCOL_MAX_REGISTERS)


@dataclass(frozen=True)
class Request:
    """One read: ``count`` registers (or bits) of ``table`` from ``start``."""

    table: str
    start: int
    count: int
    points: tuple[Point, ...] = field(compare=False)

    @property
    def end(self) -> int:
        return self.start + self.count

    def __str__(self) -> str:
        return f"{self.table}[{self.start}..{self.end - 1}]"


def coalesce(points: Iterable[Point], limits: Limits) -> list[Request]:
    """Fewest requests covering ``points``: greedy over addresses per table.

    Greedy is optimal here: a block is closed only when the next point cannot join it,
    so no other grouping of the sorted points can close fewer blocks.
    """
    by_table: dict[str, list[Point]] = {}
    for point in points:
        by_table.setdefault(point.table, []).append(point)
    requests: list[Request] = []
    for table in TABLE_ORDER:
        members = sorted(by_table.get(table, ()), key=lambda p: (p.address, p.end))
        span = limits.span(table)
        block: list[Point] = []
        start = end = 0
        for point in members:
            if point.count > span:
                raise ValueError(f"point {point.name} needs {point.count} registers, more "
                                 f"than one read may fetch ({span})")
            too_long = max(end, point.end) - start > span
            if block and (too_long or point.address - end > limits.max_gap):
                requests.append(Request(table, start, end - start, tuple(block)))
                block = []
            if not block:
                start, end = point.address, point.end
            block.append(point)
            end = max(end, point.end)
        if block:
            requests.append(Request(table, start, end - start, tuple(block)))
    return requests


def split(request: Request) -> list[Request]:
    """Two requests for the points of ``request``, cut at its widest gap.

    A rejected read usually spans a hole in the device's map, and the widest gap between
    neighbouring points is the likeliest hole; with no gaps, cut in the middle.
    """
    points = sorted(request.points, key=lambda p: (p.address, p.end))
    middle = len(points) / 2
    best, cut = -1, len(points) // 2
    reach = points[0].end
    for index in range(1, len(points)):
        gap = points[index].address - reach
        if gap > best or (gap == best and abs(index - middle) < abs(cut - middle)):
            best, cut = gap, index
        reach = max(reach, points[index].end)
    return [_cover(request.table, points[:cut]), _cover(request.table, points[cut:])]


def _cover(table: str, points: Sequence[Point]) -> Request:
    start = min(p.address for p in points)
    end = max(p.end for p in points)
    return Request(table, start, end - start, tuple(points))


class ReadPlan:
    """The current requests of one device, refined by what the device rejects.

    ``reject(request)`` is called when the device answered a request with an address
    exception: a multi-point request is replaced by its two halves (both read in the same
    cycle by the caller), a single-point request marks its point bad and drops it.

    Bad points are not dropped for good: the caller re-reads them now and then
    (:meth:`bad_points`), and ``restore`` puts those that answer back. A device whose
    firmware update fixed a register, or one that rejected a range while it booted,
    must not stay blind for the rest of the gateway's uptime.
    """

    def __init__(self, points: Iterable[Point], limits: Limits) -> None:
        self.points = list(points)
        self.limits = limits
        self.requests = coalesce(self.points, limits)
        self.bad: dict[str, str] = {}
        self.splits = 0

    def reject(self, request: Request, reason: str) -> list[Request]:
        """Replace ``request``; returns the requests to try instead (maybe none)."""
        index = self.requests.index(request)
        if len(request.points) == 1:
            point = request.points[0]
            self.bad[point.name] = reason
            del self.requests[index]
            return []
        halves = split(request)
        self.requests[index:index + 1] = halves
        self.splits += 1
        return halves

    def bad_points(self) -> list[Point]:
        return [p for p in self.points if p.name in self.bad]

    def restore(self, names: Iterable[str]) -> None:
        """Points that answer again: re-plan from scratch without the still-bad ones.

        The splits learned so far are forgotten on purpose: a point that answers again
        means the device's map changed, so holes are learned anew (a still-rejected
        coalesced read costs a few split requests once)."""
        for name in names:
            self.bad.pop(name, None)
        self.requests = coalesce([p for p in self.points if p.name not in self.bad],
                                 self.limits)

    def __len__(self) -> int:
        return len(self.requests)
