"""Shared serial transport for the serial protocol drivers (DL/T 645, CJ/T 188,
serial_line, OSDP): one open port per bus, frame scanning with resynchronisation.

Not a driver itself: it registers nothing.
"""
