"""CJ/T 188 meter driver: one 901F read per poll -> one reading."""

from __future__ import annotations

from typing import Any

from drivers.cjt188 import client
from drivers.cjt188.config import Cjt188Config
from drivers.cjt188.data import MEASUREMENT, DataError, decode_read_data
from drivers.cjt188.frame import METER_TYPES
from drivers.serialbus.line import SerialLine
from drivers.serialbus.polling import PolledMeter, ReadFailed
from gateway.reading import FieldValue


class _Settings:
    """PolledMeter reads interval/backoff/measurement from here (measurement defaulted)."""

    def __init__(self, cfg: Cjt188Config) -> None:
        self.interval = cfg.interval
        self.backoff_max = cfg.backoff_max
        self.offline_after = cfg.offline_after
        self.measurement = cfg.measurement or MEASUREMENT[METER_TYPES[cfg.meter_type]]


class Cjt188Driver(PolledMeter):
    def __init__(self, config: Cjt188Config, ctx: Any) -> None:
        self.cjt = config
        self.type_code = METER_TYPES[config.meter_type]
        super().__init__(_Settings(config), ctx)

    async def poll(self, line: SerialLine) -> dict[str, FieldValue]:
        cfg = self.cjt
        reply = await client.read_data(line, self.type_code, cfg.address, order=cfg.di_order,
                                       reply_timeout=cfg.timeout, count=self.count)
        try:
            return decode_read_data(reply.meter_type, reply.data[3:])
        except DataError as exc:
            raise ReadFailed("bad_value", str(exc)) from None
