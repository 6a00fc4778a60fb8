"""camera_push: cameras and access terminals that POST their events to the gateway
(plate cameras, Hikvision ISAPI listening host, generic JSON webhooks)."""

from drivers.camera_push.config import CameraPushConfig
from drivers.camera_push.driver import CameraPushDriver
from gateway.accessevents import EMPLOYEE_RENAMED, hides_only_old_employee
from gateway.registry import register_cross_check, register_driver

register_driver(CameraPushConfig, CameraPushDriver)


def _needs_http_section(config: object) -> list[tuple[tuple[object, ...], str]]:
    if getattr(config, "http", None) is not None:
        return []
    return [(("devices", i), "the camera_push driver needs the http: section (listen, "
             "max_body)")
            for i, d in enumerate(getattr(config, "devices", [])) if d.driver == "camera_push"]


def _unique_tokens(config: object) -> list[tuple[tuple[object, ...], str]]:
    """Two devices with one token: a leaked token opens both; refuse it at check."""
    seen: dict[str, int] = {}
    findings: list[tuple[tuple[object, ...], str]] = []
    for i, device in enumerate(getattr(config, "devices", [])):
        if device.driver != "camera_push" or device.token is None:
            continue
        token = device.token.get_secret_value()
        if token in seen:
            findings.append((("devices", i, "token"),
                             f"same token as devices[{seen[token]}]: give each device its own"))
        else:
            seen[token] = i
    return findings


def _renamed_private_fields(config: object) -> list[tuple[tuple[object, ...], str]]:
    """``pseudonymize: [employee]`` on a Hikvision device hid the employee number until
    its events followed the access-event contract; it is now ``person`` (face events)
    or ``holder`` (others). Refused at check, or the number would go out in clear."""
    findings: list[tuple[tuple[object, ...], str]] = []
    for i, device in enumerate(getattr(config, "devices", [])):
        if device.driver != "camera_push" or device.profile != "hikvision-isapi":
            continue
        if hides_only_old_employee(device.pseudonymize):
            findings.append((("devices", i, "pseudonymize"), EMPLOYEE_RENAMED))
    return findings


register_cross_check(_needs_http_section)
register_cross_check(_unique_tokens)
register_cross_check(_renamed_private_fields)
