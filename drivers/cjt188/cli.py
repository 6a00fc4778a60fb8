"""``iotgw cjt188 read``: read one meter's 901F data (or its address) without a gateway."""

from __future__ import annotations

import argparse
import asyncio
import sys

from drivers.cjt188.frame import METER_TYPES
from drivers.serialbus.cli import add_port_arguments, line_from_args
from drivers.serialbus.polling import ReadFailed
from drivers.serialbus.port import PortError


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cjt188", help="CJ/T 188 water/heat/gas meters: read")
    commands = parser.add_subparsers(dest="cjt188_command", required=True)
    read = commands.add_parser("read", help="read totals, meter time and status (DI 901F); "
                               "without --address, read the address of the only meter")
    add_port_arguments(read)
    read.add_argument("--address", help="meter address (omit to read the address)")
    read.add_argument("--type", dest="meter_type", choices=sorted(METER_TYPES),
                      default="cold_water")
    read.add_argument("--di-order", choices=["2004", "2018"], default="2004")
    read.set_defaults(func=cmd_read)


def cmd_read(args: argparse.Namespace) -> int:
    from drivers.cjt188 import client
    from drivers.cjt188.data import DataError, decode_read_data

    type_code = METER_TYPES[args.meter_type]

    async def go() -> list[str]:
        line = line_from_args(args)
        try:
            if not args.address:
                return [await client.read_address(line, type_code, order=args.di_order)]
            reply = await client.read_data(line, type_code, args.address, order=args.di_order)
            fields = decode_read_data(reply.meter_type, reply.data[3:])
            return [f"{name:<18} {value}" for name, value in fields.items()]
        finally:
            await line.close()

    try:
        lines = asyncio.run(go())
    except (ReadFailed, PortError, DataError) as exc:
        print(f"read failed: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0
