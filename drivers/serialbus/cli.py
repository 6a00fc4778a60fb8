"""Helpers for commissioning commands that talk to a port directly (no gateway running)."""

from __future__ import annotations

import argparse

from drivers.serialbus.line import SerialLine
from drivers.serialbus.port import PortSettings


def add_port_arguments(parser: argparse.ArgumentParser, *, baudrate: int = 2400,
                       parity: str = "E") -> None:
    parser.add_argument("--port", required=True,
                        help="serial port or pyserial URL (socket://host:port, rfc2217://...)")
    parser.add_argument("--baudrate", type=int, default=baudrate)
    parser.add_argument("--parity", choices=["N", "E", "O"], default=parity)
    parser.add_argument("--bytesize", type=int, choices=[7, 8], default=8)
    parser.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    parser.add_argument("--timeout", type=float, default=1.0, help="reply timeout, seconds")


def line_from_args(args: argparse.Namespace) -> SerialLine:
    settings = PortSettings(args.port, args.baudrate, args.parity, args.bytesize, args.stopbits)
    return SerialLine("cli", settings, args.timeout)
