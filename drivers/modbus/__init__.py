"""modbus: Modbus TCP, RTU on shared RS-485 buses, RTU over TCP; profiles; commissioning CLI."""

from drivers.modbus.checks import check_modbus_devices
from drivers.modbus.cli import add_commands
from drivers.modbus.config import ModbusConfig
from drivers.modbus.driver import ModbusDriver
from gateway.registry import register_cli, register_cross_check, register_driver

register_driver(ModbusConfig, ModbusDriver)
register_cli(add_commands)
register_cross_check(check_modbus_devices)
