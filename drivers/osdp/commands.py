"""Ops commands (LED, buzzer) as libosdp command dicts.

``write("led", "green")`` or ``write("led", {"color": "red", "seconds": 3})``;
``write("buzzer", 2)`` beeps twice. Unknown values are refused with a reason.
"""

from __future__ import annotations

from typing import Any

from drivers.osdp.libosdp import Command, CommandLEDColor
from gateway.errors import CommandRefused

COLORS = {"off": CommandLEDColor.Black, "red": CommandLEDColor.Red,
          "green": CommandLEDColor.Green, "amber": CommandLEDColor.Amber,
          "blue": CommandLEDColor.Blue}


def led(value: Any) -> dict[str, Any]:
    spec = {"color": value} if isinstance(value, str) else dict(value or {})
    color = COLORS.get(str(spec.get("color", "green")).lower())
    if color is None:
        raise CommandRefused(f"led color must be one of {', '.join(COLORS)}")
    seconds = float(spec.get("seconds", 2))
    if not 0 < seconds <= 25:
        raise CommandRefused("led seconds must be in (0, 25]")
    return {"command": Command.LED, "reader": 0, "led_number": 0, "control_code": 1,
            "on_count": 10, "off_count": 0, "on_color": color,
            "off_color": CommandLEDColor.Black, "timer_count": int(seconds * 10),
            "temporary": True}


def buzzer(value: Any) -> dict[str, Any]:
    count = int(value if not isinstance(value, dict) else value.get("count", 1))
    if not 1 <= count <= 10:
        raise CommandRefused("buzzer count must be 1..10")
    return {"command": Command.Buzzer, "reader": 0, "control_code": 2, "on_count": 2,
            "off_count": 2, "rep_count": count}


COMMANDS = {"led": led, "buzzer": buzzer}
