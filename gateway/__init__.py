"""iotgw: edge gateway for residential compounds."""

from __future__ import annotations

import functools


@functools.cache
def _version() -> str:
    """From the installed distribution: pyproject.toml is the one place it is written.

    Looked up on first use (``gateway.__version__``), not at import: importlib.metadata
    costs ~30 ms, and ``iotgw run`` installs its SIGHUP disposition only after this
    package is imported (a HUP before that ends the process, gateway.cli.EarlyHangups)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("iotgw")
    except PackageNotFoundError:  # a source tree nobody installed (pip install -e . fixes it)
        return "0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'gateway' has no attribute {name!r}")
