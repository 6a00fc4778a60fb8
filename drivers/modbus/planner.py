"""Which requests read a device's points: as few as the transport's costs make worth it.

Whether two points share a read is a question of cost, not a fixed gap. On Modbus TCP one
more request is a round trip and a turn of both sides' stacks, while unused registers in
a read cost bytes in a frame that is sent anyway: merging is always cheaper while the span
fits in one request (125 registers, 2000 bits). On RTU every byte takes a character time
on the line, so a gap is compared with what one more request costs there: its 8-byte
frame, the reply's 5 bytes of header and CRC, the 3.5-character silence each way and the
device's turnaround (:class:`WireCost`). At 9600 baud that is ~26 ms, the price of a
12-register gap.

Devices have limits the protocol does not: some reject long reads (``max_registers``) or
reads that span unmapped addresses; an installer may cap gaps with ``max_gap`` (then the
cost model is not asked). When a device rejects a coalesced read anyway, :class:`ReadPlan`
splits it where the gap is largest, keeps what works and remembers that.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from drivers.modbus.points import Point

PROTOCOL_MAX_REGISTERS = 125
PROTOCOL_MAX_BITS = 2000
TABLE_ORDER = ("coil", "discrete", "holding", "input")


REQUEST_BYTES = 8
"""An RTU read request: unit, function, start (2), count (2), CRC (2)."""
REPLY_OVERHEAD_BYTES = 5
"""An RTU read reply around its data: unit, function, byte count, CRC (2)."""
SILENCE_CHARACTERS = 3.5
DEFAULT_TURNAROUND = 0.005
"""Seconds a device takes to start answering, when the config does not say: meters answer
2-20 ms after a request; the low end errs toward one more request rather than toward
reading long runs of unused registers."""


@dataclass(frozen=True)
class WireCost:
    """What reading costs on one transport, in seconds: the planner's price list.

    ``char_time`` is 0 on TCP, where bytes are free next to a round trip."""

    char_time: float = 0.0
    """Seconds per byte on the serial line (start + data + parity + stop bits / baud)."""
    silence: float = 0.0
    """The inter-frame silence kept before each frame (3.5 characters on RTU)."""
    turnaround: float = DEFAULT_TURNAROUND
    """Seconds from the end of a request to the start of the device's reply."""

    @classmethod
    def serial(cls, baudrate: int, bits_per_char: int = 10, silence: float | None = None,
               turnaround: float | None = None) -> WireCost:
        """An RTU line; ``silence`` defaults to 3.5 characters (1.75 ms above 19200 baud,
        as the Modbus serial line spec fixes it)."""
        char = bits_per_char / baudrate
        if silence is None:
            silence = 0.00175 if baudrate > 19200 else SILENCE_CHARACTERS * char
        return cls(char, silence, DEFAULT_TURNAROUND if turnaround is None else turnaround)

    @property
    def request_seconds(self) -> float:
        """What one more request costs: both frames' overhead, two silences, turnaround."""
        return ((REQUEST_BYTES + REPLY_OVERHEAD_BYTES) * self.char_time + 2 * self.silence
                + self.turnaround)

    def gap_seconds(self, gap: int, bits: bool) -> float:
        """What ``gap`` unused registers (2 bytes each) or bits (packed 8 a byte) cost."""
        return (gap / 8 if bits else 2 * gap) * self.char_time

    def merges(self, gap: int, bits: bool) -> bool:
        """Whether reading over ``gap`` is cheaper than one more request (TCP: always)."""
        return self.char_time <= 0 or self.gap_seconds(gap, bits) < self.request_seconds


TCP = WireCost()


@dataclass(frozen=True)
class Limits:
    max_registers: int = PROTOCOL_MAX_REGISTERS
    max_bits: int = PROTOCOL_MAX_BITS
    max_gap: int | None = None
    """Unused registers (or bits) a read may span between two points: an installer's
    override of the cost model (None: ask ``cost``)."""
    cost: WireCost = TCP

    def merges(self, table: str, gap: int) -> bool:
        """Whether a read may span ``gap`` unused registers (or bits) of ``table``."""
        if self.max_gap is not None:
            return gap <= self.max_gap
        return self.cost.merges(gap, table in ("coil", "discrete"))

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
    so no other grouping of the sorted points can close fewer blocks. (Whether a gap
    merges depends only on its own size, so a cheaper gap never hides behind a dearer one.)
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
            if block and (too_long or not limits.merges(table, point.address - end)):
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
