"""iotgw: edge gateway for residential compounds."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("iotgw")
    """From the installed distribution: pyproject.toml is the one place it is written."""
except PackageNotFoundError:  # a source tree nobody installed (pip install -e . fixes it)
    __version__ = "0+unknown"
