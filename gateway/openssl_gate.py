"""OpenSSL is loaded only by a gateway whose config uses it.

Why: libssl and libcrypto take ~4.5-5 MiB of a running gateway's resident memory (issue
11: 44 MiB against 40 for 100 Modbus meters and a file sink), and a gateway of meters
writing to a local file, or to a broker over plain MQTT on the compound LAN, never
calls them. They arrive long before the config is read: asyncio imports ``ssl``, and
pydantic imports ``secrets``, hence ``hmac``, hence ``_hashlib``.

CPython supports being built without OpenSSL, and the libraries on this path fall back
when those imports fail: asyncio without TLS, ``hashlib`` and ``hmac`` on CPython's own
SHA-2/SHA-3/BLAKE2 code, paho and aiohttp without TLS. So ``iotgw run`` starts with the
three imports held back (:func:`hold_back`), reads the config, asks every configured
component whether it needs OpenSSL (:func:`users`; a plugin that does not say so is
assumed to), and when one does, executes itself again in place (gateway/restart.py):
same PID, same arguments, with ``IOTGW_OPENSSL=1`` so nothing is held back. A reload
that brings the first TLS user does the same after a graceful stop (nothing is lost: the
buffer is on disk). Setting ``IOTGW_OPENSSL=1`` in the environment loads OpenSSL
always (the previous behaviour).

Modules in ``sys.modules`` cannot be unloaded, so the decision only goes one way: a
process that has OpenSSL keeps it until it exits.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

    from gateway.config.loader import LoadedConfig

ENV = "IOTGW_OPENSSL"
"""``1``: load OpenSSL as usual (set for the image a restart for OpenSSL starts)."""

HELD_BACK = ("ssl", "_ssl", "_hashlib")
"""The imports that map libssl/libcrypto: ``ssl`` (asyncio, paho, aiohttp, urllib3) and
``_hashlib`` (hashlib's and hmac's OpenSSL backend, through pydantic's ``secrets``)."""

class OpenSSLHeldBack(ModuleNotFoundError):
    """An import of OpenSSL in a process that started without it.

    Libraries that can do without TLS catch this (a ModuleNotFoundError, as on a Python
    built without OpenSSL); anything else fails with the reason and the remedy."""


class _Gate:
    """Refuses the held-back imports, first on ``sys.meta_path`` (a meta path finder is
    anything with ``find_spec``; ``importlib.abc`` is not imported for it: that would
    load importlib.resources and zipfile before anything else, ~2 MiB)."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in HELD_BACK:
            return None
        raise OpenSSLHeldBack(
            f"{fullname} is not loaded in this gateway: no component of its config said it "
            f"needs OpenSSL (a plugin declares it with needs_openssl(); {ENV}=1 loads it "
            "always)", name=fullname)


_gate: _Gate | None = None


def hold_back() -> bool:
    """Refuse the OpenSSL imports from now on, unless ``IOTGW_OPENSSL=1`` or one of them
    is already loaded (then holding the others back would save nothing). Returns whether
    they are held back; called first thing by ``iotgw run``, before asyncio loads."""
    global _gate
    if _gate is not None:
        return True
    if os.environ.get(ENV) == "1" or any(name in sys.modules for name in HELD_BACK):
        return False
    _gate = _Gate()
    sys.meta_path.insert(0, _gate)
    return True


def held_back() -> bool:
    """Whether this process runs without OpenSSL."""
    return _gate is not None


def users(config: LoadedConfig) -> list[str]:
    """The parts of ``config`` that need OpenSSL, by their place in the file (empty: none).

    Each driver and sink says so itself (``needs_openssl``; the base classes answer yes,
    so a plugin that never heard of this keeps working); the core's own sections answer
    here: the MQTT link needs it for ``tls:`` only, the health endpoint always
    (prometheus_client imports ``ssl`` for its push client); the push receiver, privacy
    and alarm rules never do. A part that imports it anyway is caught where it fails (a
    plugin's module while the config loads, a service at start, a supervised task) and
    the gateway starts again with OpenSSL."""
    model = config.model
    found: list[str] = []
    if model.mqtt is not None and model.mqtt.tls is not None:
        found.append("mqtt.tls")
    if model.health is not None and model.health.enabled:
        found.append("health (its /metrics: prometheus_client imports ssl)")
    for index, device in enumerate(model.devices):
        if device.enabled:
            bus = model.buses.get(getattr(device, "bus", None) or "")
            if device.needs_openssl(bus):
                found.append(f"devices[{index}] {device.id} ({device.driver})")
    for index, sink in enumerate(config.sinks):
        if sink.needs_openssl():
            found.append(f"sinks[{index}] {sink.sink_name} ({sink.type})")
    return found


def held_back_import(exc: BaseException) -> OpenSSLHeldBack | None:
    """The held-back import behind ``exc``, if one is: a driver may wrap it in its own
    error (``raise DeviceError(...) from exc``) or meet it inside a TaskGroup (an
    ExceptionGroup; an outside probe's driver was silent for good that way)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OpenSSLHeldBack):
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def importer(exc: OpenSSLHeldBack) -> str:
    """Who imported OpenSSL, for the log: the innermost frame outside the import
    machinery (a plugin module that imports ``ssl`` at the top, without a fallback)."""
    where = "a module"
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if not code.co_filename.startswith("<") and code.co_filename != __file__:
            where = f"{code.co_filename}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f"{where} (imports {exc.name})"
