"""The ``iotgw`` command (also ``python -m gateway``).

Exit codes: 0 ok, 1 runtime failure, 2 invalid config or usage.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

import gateway
from gateway import openssl_gate
from gateway.errors import BufferFailure, ConfigError

if TYPE_CHECKING:  # pydantic and the config models are imported where they are used, so
    # ``iotgw run`` installs its SIGHUP disposition before they load (EarlyHangups)
    from gateway.config.loader import LoadedConfig

EXIT_CONFIG = 2


class EarlyHangups:
    """SIGHUPs that arrive while ``iotgw run`` starts, before the event loop's handler.

    SIGHUP's default action ends the process (rc 129): an outside probe lost the gateway
    to a reload request 0.1 s after start, while the interpreter was still importing. This
    is installed first thing in :func:`main` (before pydantic and the config models
    load), and remembers instead of reloading: the config about to be read covers every
    HUP before :meth:`config_read_starts`; one after it (the file may have changed after
    it was read) becomes a reload once the gateway runs. What remains is the interpreter's
    own start-up, before any code of ours runs.
    """

    def __init__(self) -> None:
        self.count = 0

    def install(self) -> None:
        signal.signal(signal.SIGHUP, self._received)

    def _received(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def config_read_starts(self) -> None:
        """The config read from here on covers every HUP received until now."""
        self.count = 0

    def reload_pending(self) -> bool:
        """A HUP came after the config was read: the gateway must read it again."""
        return self.count > 0


def _load_or_exit(path: str) -> LoadedConfig:
    from gateway.config.loader import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found; nothing was started.", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.logs import setup_logging
    from gateway.restart import for_openssl, openssl_needed, start_again
    from gateway.runtime import run_gateway

    hangups: EarlyHangups = getattr(args, "hangups", None) or EarlyHangups()
    hangups.install()  # main() did already, unless called directly (tests)
    setup_logging(args.log_format, args.log_level)
    hangups.config_read_starts()
    try:
        config = _load_or_exit(args.config)
    except openssl_gate.OpenSSLHeldBack as exc:  # a plugin's module imports ssl
        start_again(for_openssl([openssl_gate.importer(exc)]))
    needed = openssl_needed(config)
    if needed is not None:
        start_again(needed)
    try:
        restart = asyncio.run(run_gateway(config, reload_pending=hangups.reload_pending))
    except BufferFailure as exc:
        # Read-only or unusable data_dir: one clear line, not a traceback per restart.
        logging.getLogger("iotgw").error("cannot run: %s", exc)
        return 1
    finally:
        # The loop's handler is gone (asyncio puts back SIG_DFL): a reload request while
        # the interpreter exits must not turn a clean stop into rc 129.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if restart is not None:  # a reload changed what only a start sets up
        start_again(restart)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config)
    print(summarize(config))
    return 0


def summarize(config: LoadedConfig) -> str:
    from gateway.urls import redact_url

    model = config.model
    lines = [f"{config.path}: OK (gateway {model.gateway.id}, site {model.gateway.site})",
             f"  data_dir: {config.data_dir}",
             f"  buffer:   {config.buffer_path} (max {model.buffer.max_bytes} bytes, "
             f"when full: {model.buffer.when_full})"]
    per_bus: Counter[tuple[str, str]] = Counter()
    for device in config.devices:
        per_bus[(getattr(device, "bus", None) or "-", device.driver)] += 1
    disabled = len(model.devices) - len(config.devices)
    lines.append(f"  devices:  {len(config.devices)} enabled"
                 + (f", {disabled} disabled" if disabled else ""))
    for (bus, driver), count in sorted(per_bus.items()):
        lines.append(f"    bus {bus:<16} {driver:<12} {count}")
    lines.append("  sinks:")
    for sink in config.sinks:
        url = getattr(sink, "url", None)
        target = redact_url(url) if url else \
            getattr(sink, "directory", None) or config.data_dir / "lines"
        lines.append(f"    {sink.sink_name:<16} {sink.type:<10} {target}")
    if model.mqtt is not None:
        lines.append(f"  mqtt:     {model.mqtt.host}:{model.mqtt.port} "
                     f"base topic {model.mqtt.base_topic}")
    needing = openssl_gate.users(config)
    lines.append("  openssl:  " + (f"loaded, for {', '.join(needing)}" if needing else
                                   "not loaded (nothing in this config needs it)"))
    lines += [f"  warning:  {w}" for sink in config.sinks
              for w in sink.setup_warnings(config.data_dir)]
    return "\n".join(lines)


def cmd_schema(args: argparse.Namespace) -> int:
    print(schema_text())
    return 0


def schema_text() -> str:
    from gateway.config.models import build_config_model

    schema = build_config_model().model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "iotgw gateway configuration"
    return json.dumps(schema, indent=2, sort_keys=True)


def cmd_buffer_stats(args: argparse.Namespace) -> int:
    from gateway.buffer import format_stats, read_stats

    config = _load_or_exit(args.config)
    if not config.buffer_path.exists():
        print(f"no buffer at {config.buffer_path} (the gateway has not run yet)")
        return 1
    try:
        stats = read_stats(config.buffer_path)
    except BufferFailure as exc:
        print(f"cannot read buffer {config.buffer_path}: {exc}", file=sys.stderr)
        return 1
    print(format_stats(stats))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.health.statustable import run_status

    return run_status(_load_or_exit(args.config), as_json=args.json)


def add_plugin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The commands of the ``iotgw.commands`` entry points (``iotgw demo``): the core adds
    them by name, so it never imports the package that defines them (demo/ composes the
    drivers' simulators, and the core never imports a driver)."""
    from gateway.registry import COMMAND_GROUP, plugin_entry_points

    for _, entry_point in sorted(plugin_entry_points(COMMAND_GROUP).items()):
        add_command: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], object] \
            = entry_point.load()
        add_command(sub)


def build_parser(with_driver_commands: bool = True,
                 with_plugin_commands: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotgw", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"iotgw {gateway.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("config")
    run.add_argument("--log-format", choices=["human", "json"], default="human")
    run.add_argument("--log-level", default="INFO",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config file and summarize it")
    check.add_argument("config")
    check.set_defaults(func=cmd_check)

    status = sub.add_parser("status", help="the running gateway's health, buffer, sinks "
                            "and devices (from its health endpoint)")
    status.add_argument("config")
    status.add_argument("--json", action="store_true", help="the raw /status document")
    status.set_defaults(func=cmd_status)

    if with_plugin_commands:
        add_plugin_commands(sub)

    from gateway.alarms.cli import add_parser as add_alarm_parsers

    add_alarm_parsers(sub)

    schema = sub.add_parser("schema", help="print the config's JSON Schema")
    schema.set_defaults(func=cmd_schema)

    buffer = sub.add_parser("buffer", help="inspect the durable buffer")
    buffer_sub = buffer.add_subparsers(dest="buffer_command", required=True)
    stats = buffer_sub.add_parser("stats", help="depth, bytes, oldest reading, lag per sink")
    stats.add_argument("config")
    stats.set_defaults(func=cmd_buffer_stats)

    if with_driver_commands:
        from gateway.registry import CLI_EXTENSIONS, load_drivers

        load_drivers()
        for add_commands in CLI_EXTENSIONS:
            add_commands(sub)
    return parser


OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG})
"""Write errors that mean the output went nowhere (full disk, dead terminal)."""
EXIT_IOERR = 74  # sysexits.h EX_IOERR

CORE_COMMANDS = frozenset({"run", "check", "schema", "buffer", "status", "rules", "alarms"})
"""Commands of the core: ``iotgw run`` must not import every driver to build its parser
(only the config's), nor the plugin commands' packages; a driver's own commands
(``iotgw modbus scan``) load the drivers."""


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), None)
    hangups = EarlyHangups() if command == "run" else None
    if hangups is not None:
        hangups.install()  # before the imports below: they take most of the start-up
        if argv is None:  # the real command line, not a test calling main() in-process
            openssl_gate.hold_back()  # before asyncio and pydantic load it
    if command in CORE_COMMANDS:
        parser = build_parser(with_driver_commands=False, with_plugin_commands=False)
    else:
        from gateway.registry import COMMAND_GROUP, plugin_entry_points

        plugin_command = command in plugin_entry_points(COMMAND_GROUP)
        parser = build_parser(with_driver_commands=not plugin_command)
    args = parser.parse_args(words)
    func: Callable[[argparse.Namespace], int] = args.func
    args.hangups = hangups
    try:
        code = func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `iotgw check x.yaml | head -1`: the reader left; no traceback, and none from
        # the interpreter flushing stdout at exit either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            raise
        # `iotgw check x.yaml > /dev/full`: one line saying why, not a traceback (and
        # none from the interpreter retrying the flush at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"iotgw: cannot write output: {exc.strerror}", file=sys.stderr)
        return EXIT_IOERR


if __name__ == "__main__":
    sys.exit(main())
