"""serial_line: card readers and gate controllers that print records on a serial line."""

from drivers.serial_line.config import SerialLineConfig
from drivers.serial_line.driver import SerialLineDriver
from gateway.registry import register_driver

register_driver(SerialLineConfig, SerialLineDriver)
