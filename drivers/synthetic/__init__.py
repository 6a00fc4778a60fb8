"""synthetic: N fields at a fixed rate, for the demo, benchmarks and tests."""

from drivers.synthetic.config import SyntheticConfig
from drivers.synthetic.driver import SyntheticDriver
from gateway.registry import register_driver

register_driver(SyntheticConfig, SyntheticDriver)
