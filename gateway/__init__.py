"""iotgw: edge gateway for residential compounds."""

__version__ = "0.1.0"
