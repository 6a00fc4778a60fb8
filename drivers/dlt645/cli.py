"""``iotgw dlt645 discover|read``: commissioning without a running gateway.

``discover`` asks the only meter on a line for its address (0x13 to AA..AA: on a bus
with several meters they would all answer at once, so connect one at a time).
``read`` reads points of one meter and prints them with units.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from drivers.serialbus.cli import add_port_arguments, line_from_args
from drivers.serialbus.polling import ReadFailed
from drivers.serialbus.port import PortError


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("dlt645", help="DL/T 645 meters: discover, read")
    commands = parser.add_subparsers(dest="dlt645_command", required=True)

    discover = commands.add_parser("discover", help="read the address of the single meter "
                                   "on a line (wildcard address)")
    add_port_arguments(discover)
    discover.set_defaults(func=cmd_discover)

    read = commands.add_parser("read", help="read points of one meter")
    add_port_arguments(read)
    read.add_argument("--address", required=True)
    read.add_argument("--protocol", choices=["2007", "1997"], default="2007")
    read.add_argument("--points", nargs="*", help="point names (default: the usual four); "
                      "'all' reads the whole table")
    read.set_defaults(func=cmd_read)


def cmd_discover(args: argparse.Namespace) -> int:
    from drivers.dlt645 import client

    async def go() -> str:
        line = line_from_args(args)
        try:
            return await client.read_address(line)
        finally:
            await line.close()

    try:
        address = asyncio.run(go())
    except (ReadFailed, PortError) as exc:
        print(f"no meter answered: {exc}", file=sys.stderr)
        return 1
    print(address)
    return 0


def cmd_read(args: argparse.Namespace) -> int:
    from drivers.dlt645 import client
    from drivers.dlt645.points import DEFAULT_POINTS
    from drivers.dlt645.protocol import DIALECTS
    from drivers.serialbus.bcd import BadValue

    dialect = DIALECTS[args.protocol]
    names = args.points or list(DEFAULT_POINTS[args.protocol])
    if names == ["all"]:
        names = list(dialect.points)
    unknown = [n for n in names if n not in dialect.points]
    if unknown:
        print(f"unknown points {unknown}; known: {', '.join(dialect.points)}", file=sys.stderr)
        return 2

    async def go() -> int:
        line = line_from_args(args)
        failures = 0
        try:
            for name in names:
                point = dialect.points[name]
                try:
                    raw = await client.read_point(line, dialect, args.address, point.di)
                    print(f"{name:<24} {point.format.decode(raw)} {point.unit}".rstrip())
                except (ReadFailed, BadValue) as exc:
                    failures += 1
                    print(f"{name:<24} ERROR {exc}")
                    if isinstance(exc, ReadFailed) and exc.kind == "timeout":
                        break
        finally:
            await line.close()
        return 1 if failures else 0

    try:
        return asyncio.run(go())
    except PortError as exc:
        print(f"cannot use port: {exc}", file=sys.stderr)
        return 1
