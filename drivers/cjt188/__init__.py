"""cjt188: CJ/T 188-2004/2018 water, heat and gas meters on RS-485."""

from drivers.cjt188.cli import add_commands
from drivers.cjt188.config import Cjt188Config
from drivers.cjt188.driver import Cjt188Driver
from gateway.registry import register_cli, register_driver

register_driver(Cjt188Config, Cjt188Driver)
register_cli(add_commands)
