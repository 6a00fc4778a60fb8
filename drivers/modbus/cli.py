"""Commissioning commands: ``iotgw modbus scan`` and ``iotgw modbus read``.

An installer with a laptop on a new RS-485 line first needs "who is there?" and then
"does this profile decode this meter sensibly?" - before writing any gateway config.
The bus comes from a config file (``--config FILE --bus NAME``) or from flags.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from drivers.modbus.client import (
    ModbusConnectionError,
    ModbusError,
    ModbusExceptionReply,
    ModbusLink,
)
from drivers.modbus.driver import ModbusBus, wire_cost
from drivers.modbus.planner import Limits, ReadPlan
from drivers.modbus.points import Point
from drivers.modbus.profiles import load_profile
from gateway.errors import ConfigError


def add_commands(sub: argparse._SubParsersAction) -> None:
    modbus = sub.add_parser("modbus", help="Modbus commissioning: scan a bus, read a device")
    cmds = modbus.add_subparsers(dest="modbus_command", required=True)

    scan = cmds.add_parser("scan", help="which unit ids answer on a bus or host")
    _bus_args(scan)
    scan.add_argument("--units", default="1-247", help="e.g. 1-247 or 1,2,5-9")
    scan.add_argument("--table", default="holding",
                      choices=["holding", "input", "coil", "discrete"])
    scan.add_argument("--address", default="0", help="register probed (0-based, hex ok)")
    scan.set_defaults(func=cmd_scan)

    read = cmds.add_parser("read", help="read and decode a device's points once")
    _bus_args(read)
    read.add_argument("--device", help="a device id from --config (its unit and points)")
    read.add_argument("--profile", help="a profile name (with --unit)")
    read.add_argument("--unit", type=int, help="unit id")
    read.set_defaults(func=cmd_read)


def _bus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="gateway config file (with --bus or --device)")
    p.add_argument("--bus", help="bus name from --config")
    p.add_argument("--port", help="serial port or socket://host:port (RTU)")
    p.add_argument("--host", help="Modbus TCP host")
    p.add_argument("--tcp-port", type=int, default=502)
    p.add_argument("--baudrate", type=int, default=9600)
    p.add_argument("--parity", default="N", choices=["N", "E", "O"])
    p.add_argument("--stopbits", type=int, default=1, choices=[1, 2])
    p.add_argument("--timeout", type=float, default=0.3, help="seconds per request")


def _units(text: str) -> list[int]:
    units: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        units.extend(range(int(lo), int(hi or lo) + 1))
    return units


def _bus_from_args(args: argparse.Namespace) -> tuple[str, Any, Any]:
    """(name, bus config, loaded config or None)."""
    from gateway.config.models import SerialBus, TcpBus

    loaded = None
    device_id = getattr(args, "device", None)  # scan has no --device
    if args.config:
        from gateway.config.loader import load_config

        loaded = load_config(args.config)
    if args.bus or (device_id and loaded is not None):
        if loaded is None:
            raise ConfigError(["--bus needs --config"])
        name = args.bus
        if name is None:
            assert device_id is not None  # no --bus, so the branch was taken for a device
            device = _device(loaded, device_id)
            name = device.bus
        if name not in loaded.model.buses:
            raise ConfigError([f"no bus {name!r} in {args.config}"])
        return name, loaded.model.buses[name], loaded
    if args.host:
        return "cli", TcpBus(type="tcp", host=args.host, port=args.tcp_port,
                             timeout=args.timeout), loaded
    if args.port:
        return "cli", SerialBus(type="serial", port=args.port, baudrate=args.baudrate,
                                parity=args.parity, stopbits=args.stopbits,
                                timeout=args.timeout), loaded
    raise ConfigError(["give --config with --bus/--device, or --host, or --port"])


def _device(loaded: Any, device_id: str) -> Any:
    for device in loaded.devices:
        if device.id == device_id and device.driver == "modbus":
            return device
    raise ConfigError([f"no modbus device {device_id!r} in {loaded.path}"])


def cmd_scan(args: argparse.Namespace) -> int:
    return _run(_scan(args))


def cmd_read(args: argparse.Namespace) -> int:
    return _run(_read(args))


def _run(coro: Any) -> int:
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2


async def _scan(args: argparse.Namespace) -> int:
    from drivers.modbus.points import parse_address

    name, bus_config, _ = _bus_from_args(args)
    bus = ModbusBus(name, bus_config, args.timeout)
    address = parse_address(args.address)
    found = 0
    try:
        try:
            await bus.link.connect()
        except ModbusConnectionError:
            print(f"error: {await bus.link.diagnose()}", file=sys.stderr)
            return 1
        for unit in _units(args.units):
            answer = await _probe(bus.link, args.table, address, unit, args.timeout)
            if answer is not None:
                found += 1
                print(f"unit {unit:3d}: {answer}", flush=True)
    finally:
        await bus.close()
    print(f"{found} unit(s) answered on {bus.link.describe()}")
    return 0 if found else 1


async def _probe(link: ModbusLink, table: str, address: int, unit: int,
                 reply_timeout: float) -> str | None:
    try:
        values = await link.read(table, address, 1, unit, reply_timeout)
    except ModbusExceptionReply as exc:
        return f"answers (exception {exc.code})"
    except ModbusError as exc:
        return f"garbled reply: {exc}" if exc.kind in ("frame_error", "wrong_unit") else None
    return f"answers, {table}[{address}] = {values[0]}"


async def _read(args: argparse.Namespace) -> int:
    name, bus_config, loaded = _bus_from_args(args)
    if args.device:
        if loaded is None:
            raise ConfigError(["--device needs --config"])
        from drivers.modbus.profiles import limits_for, resolve_points

        device = _device(loaded, args.device)
        points, _ = resolve_points(device)
        unit = device.unit
        limits = limits_for(device, wire_cost(bus_config, device.turnaround))
    elif args.profile and args.unit is not None:
        profile = load_profile(args.profile)
        points, unit = profile.points, args.unit
        limits = Limits(profile.max_registers or 125, 2000, profile.max_gap,
                        wire_cost(bus_config))
    else:
        raise ConfigError(["give --device (with --config) or --profile with --unit"])
    bus = ModbusBus(name, bus_config, args.timeout)
    plan = ReadPlan(points, limits)
    rows: list[tuple[Point, str]] = []
    try:
        pending = list(plan.requests)
        while pending:
            request = pending.pop(0)
            try:
                words = await bus.link.read(request.table, request.start, request.count,
                                            unit, args.timeout)
            except ModbusExceptionReply as exc:
                if exc.address_problem:
                    pending[:0] = plan.reject(request, str(exc))
                    continue
                raise
            for point in request.points:
                off = point.address - request.start
                rows.append((point, repr(point.decode(words[off:off + point.count]))))
    except ModbusConnectionError:
        print(f"error: {await bus.link.diagnose()}", file=sys.stderr)
        return 1
    except ModbusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        await bus.close()
    rows.extend((p, f"REJECTED ({plan.bad[p.name]})") for p in points if p.name in plan.bad)
    rows.sort(key=lambda r: (r[0].table, r[0].address))
    print(f"{'point':<28} {'table':<8} {'addr':>6} {'type':<8} {'value':>18} unit")
    for point, value in rows:
        print(f"{point.name:<28} {point.table:<8} {point.address:>6} {point.kind:<8} "
              f"{value:>18} {point.unit or ''}")
    print(f"{len(plan.requests)} request(s) for {len(points)} point(s)")
    return 0
