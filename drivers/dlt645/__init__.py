"""dlt645: DL/T 645-2007/1997 electricity meters on RS-485 (local port or socket://)."""

from drivers.dlt645.cli import add_commands
from drivers.dlt645.config import Dlt645Config
from drivers.dlt645.driver import Dlt645Driver
from gateway.registry import register_cli, register_driver

register_driver(Dlt645Config, Dlt645Driver)
register_cli(add_commands)
