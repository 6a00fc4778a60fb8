"""DL/T 645 meter driver: polls a list of points, one reading per poll."""

from __future__ import annotations

import logging

from drivers.dlt645 import client
from drivers.dlt645.config import Dlt645Config
from drivers.dlt645.points import Point
from drivers.dlt645.protocol import DIALECTS
from drivers.serialbus.bcd import BadValue, BcdFormat
from drivers.serialbus.line import SerialLine
from drivers.serialbus.polling import SILENT_KINDS, PolledMeter, ReadFailed
from gateway.problems import ProblemLog
from gateway.reading import FieldValue


def resolve_points(cfg: Dlt645Config) -> list[Point]:
    table = DIALECTS[cfg.protocol].points
    out = []
    for name in cfg.point_names():
        custom = cfg.custom_points.get(name)
        if custom is not None:
            out.append(Point(name, custom.di_value, BcdFormat.parse(custom.format),
                             custom.unit, "custom"))
        else:
            out.append(table[name])
    return out


class Dlt645Driver(PolledMeter):
    config: Dlt645Config

    def __init__(self, config: Dlt645Config, ctx: object) -> None:
        super().__init__(config, ctx)
        self.dialect = DIALECTS[config.protocol]
        self.points = resolve_points(config)
        self.point_problems = ProblemLog(self.ctx.log)

    def _point_failed(self, point: Point, kind: str, message: str) -> None:
        """Logged once per point and kind (a meter lacking a DI says so every poll)."""
        self.ctx.count(kind)
        di = f"{point.di:0{self.dialect.di_size * 2}X}"
        self.point_problems.report(f"{point.name}:{kind}", f"device {self.ctx.device_id}: "
                                   f"point {point.name} (DI {di}): {message}",
                                   level=logging.WARNING)

    async def poll(self, line: SerialLine) -> dict[str, FieldValue]:
        fields: dict[str, FieldValue] = {}
        last: ReadFailed | None = None
        for point in self.points:
            try:
                raw = await client.read_point(line, self.dialect, self.config.address, point.di,
                                              reply_timeout=self.config.timeout, count=self.count)
                fields[point.name] = point.format.decode(raw)
            except ReadFailed as exc:
                if exc.kind in SILENT_KINDS:
                    raise
                last = exc
                self._point_failed(point, exc.kind, str(exc))
            except BadValue as exc:
                last = ReadFailed("bad_value", f"point {point.name}: {exc}")
                self._point_failed(point, "bad_value", str(exc))
        if not fields and last is not None:
            raise ReadFailed(last.kind, f"no point could be read; last: {last}")
        return fields
