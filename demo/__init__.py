"""``iotgw demo``: a simulated compound run through the real drivers, buffer and sinks.

Modbus TCP meters (pymodbus servers on loopback ports), DL/T 645 and CJ/T 188 meters on
one RS-485 line (a pseudo-terminal), a card reader swiping (a pseudo-terminal, card
numbers pseudonymised), and a plate camera publishing over MQTT when ``--mqtt-host`` is
given. Readings go to a file sink under the data dir, or to InfluxDB with ``--influx-url``.

This module only defines the command line; the simulators load when the command runs.
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to the ``iotgw`` subcommands."""
    demo = sub.add_parser(
        "demo", help="run a simulated compound (Modbus, DL/T 645, CJ/T 188, card reader, "
        "MQTT plate camera) through the real gateway, with a live view")
    demo.add_argument("--data-dir", default="var/demo-compound",
                      help="buffer, file sink, generated config and key (default: "
                      "./var/demo-compound)")
    demo.add_argument("--duration", type=float, default=0,
                      help="stop after this many seconds (default: until Ctrl-C / SIGTERM)")
    demo.add_argument("--no-view", action="store_true", help="logs only, no live view")
    demo.add_argument("--log-level", default="INFO",
                      choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    demo.add_argument("--swipe-every", type=float, default=4.0, help=argparse.SUPPRESS)
    demo.add_argument("--health-listen", default="127.0.0.1:0",
                      help="host:port of the health endpoint (default: a free loopback port; "
                      "0.0.0.0:9108 in a container)")
    influx = demo.add_argument_group("InfluxDB sink (instead of the file sink)")
    influx.add_argument("--influx-url", help="e.g. http://127.0.0.1:8086")
    influx.add_argument("--influx-token", default=os.environ.get("IOTGW_DEMO_INFLUX_TOKEN"),
                        help="default: $IOTGW_DEMO_INFLUX_TOKEN (keeps it out of `ps`)")
    influx.add_argument("--influx-token-file", help="read the token from this file "
                        "(a Docker secret or systemd credential)")
    influx.add_argument("--influx-bucket", default="iotgw")
    influx.add_argument("--influx-org", default="-")
    mqtt = demo.add_argument_group("MQTT (ops bus, and the simulated plate camera)")
    mqtt.add_argument("--mqtt-host")
    mqtt.add_argument("--mqtt-port", type=int, default=1883)
    mqtt.add_argument("--mqtt-username")
    mqtt.add_argument("--mqtt-password", default=os.environ.get("IOTGW_DEMO_MQTT_PASSWORD"),
                      help="default: $IOTGW_DEMO_MQTT_PASSWORD")
    mqtt.add_argument("--mqtt-password-file", help="read the password from this file")
    demo.set_defaults(func=cmd_demo)
    return demo


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    from pathlib import Path

    from demo.compound import run_compound
    from gateway.config.types import read_secret_file
    from gateway.logs import setup_logging

    if args.influx_token_file:
        args.influx_token = read_secret_file(Path(args.influx_token_file))
    if args.mqtt_password_file:
        args.mqtt_password = read_secret_file(Path(args.mqtt_password_file))
    args.data_dir = Path(args.data_dir).resolve()
    args.data_dir.mkdir(parents=True, exist_ok=True)
    setup_logging("human", args.log_level)
    if not args.no_view:
        # The view owns the terminal: the log goes to a file in the data dir instead.
        path = args.data_dir / "demo.log"
        root = logging.getLogger()
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(root.handlers[0].formatter)
        root.handlers[:] = [handler]
    return asyncio.run(run_compound(args))
