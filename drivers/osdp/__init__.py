"""osdp: OSDP readers (card, keypad) through libosdp, the gateway as control panel.

libosdp is a compiled extension: where it is not installed the driver is simply not
registered (configs naming ``driver: osdp`` then fail validation with the known drivers
listed), instead of breaking every other driver at import.
"""

try:
    from drivers.osdp import libosdp as _libosdp  # noqa: F401
except ImportError:  # pragma: no cover - depends on the platform's wheels
    pass
else:
    from drivers.osdp.checks import check_osdp_lines
    from drivers.osdp.config import OsdpConfig
    from drivers.osdp.driver import OsdpDriver
    from gateway.registry import register_cross_check, register_driver

    register_driver(OsdpConfig, OsdpDriver)
    register_cross_check(check_osdp_lines)
