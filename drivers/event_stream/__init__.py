"""event_stream: Hikvision alertStream and Dahua eventManager streams the gateway opens,
with backfill from Hikvision access terminals' event logs (README.md in this folder)."""

from typing import Any

from drivers.event_stream.config import CONNECTION_KEYS, EventStreamConfig
from drivers.event_stream.driver import EventStreamDriver
from gateway.accessevents import EMPLOYEE_RENAMED, hides_only_old_employee
from gateway.registry import register_cross_check, register_driver

register_driver(EventStreamConfig, EventStreamDriver)


def _one_connection_per_host(config: Any) -> list[tuple[tuple[object, ...], str]]:
    """Devices on one host:port share one stream, so its settings must be the same."""
    first: dict[tuple[str, int], tuple[int, EventStreamConfig]] = {}
    findings: list[tuple[tuple[object, ...], str]] = []
    for i, device in enumerate(getattr(config, "devices", [])):
        if not isinstance(device, EventStreamConfig):
            continue
        key = (device.host.lower(), device.port)
        if key not in first:
            first[key] = (i, device)
            continue
        j, other = first[key]
        if device.connection() != other.connection():
            differ = [k for k in CONNECTION_KEYS if getattr(device, k) != getattr(other, k)]
            findings.append((("devices", i), f"shares host {device.host}:{device.port} with "
                             f"devices[{j}] ({other.id}), whose stream settings differ: "
                             f"{', '.join(differ)} (one stream per host)"))
    return findings


def _renamed_private_fields(config: Any) -> list[tuple[tuple[object, ...], str]]:
    """``pseudonymize: [employee]`` on a Hikvision device hid the employee number until
    its access events followed the access-event contract (docs/schema.md); it is now
    ``person`` on face events and ``holder`` on the others, as camera_push writes it.
    Refused at check, or the number would go out in clear."""
    findings: list[tuple[tuple[object, ...], str]] = []
    for i, device in enumerate(getattr(config, "devices", [])):
        if not isinstance(device, EventStreamConfig) or device.profile != "hikvision":
            continue
        if hides_only_old_employee(device.pseudonymize):
            findings.append((("devices", i, "pseudonymize"), EMPLOYEE_RENAMED))
    return findings


register_cross_check(_one_connection_per_host)
register_cross_check(_renamed_private_fields)
