"""Camera and terminal conditions, and how each shows on the ordinary device state.

Operators need four answers about a camera: it is ``up``; it answers but refuses our
credentials (``auth_failed``: someone changed the password, or it is locking us out);
it does not answer at all (``unreachable``); or the connection is open but nothing comes
(``stream_silent``: a half-open TCP connection after a reboot, a hung firmware). The
ops bus and metrics keep the one state enum every device has (online / offline / error);
the condition is ``DeviceStatus.condition`` (``condition`` on ``devices/<id>/state``,
``iotgw_device_condition`` in the metrics, shown in ``iotgw status``), the first word of
``last_error`` ("auth_failed: 401 from ...") and a field of the ``camera_health``
reading, so a rule or a dashboard can key on it.

The exceptions are the project's own (gateway/errors.py) so the supervisor and callers
decide from ``retryable`` without knowing aiohttp: the client module converts to them.
"""

from __future__ import annotations

from gateway.driver import DeviceState
from gateway.errors import DeviceAuthError, DeviceError

UP = "up"
AUTH_FAILED = "auth_failed"
UNREACHABLE = "unreachable"
STREAM_SILENT = "stream_silent"
BAD_ANSWER = "bad_answer"
"""It answers, but not what the protocol says (404 wrong path, 500, not multipart)."""

STATES: dict[str, DeviceState] = {
    UP: DeviceState.ONLINE,
    UNREACHABLE: DeviceState.OFFLINE,
    STREAM_SILENT: DeviceState.OFFLINE,
    AUTH_FAILED: DeviceState.ERROR,
    BAD_ANSWER: DeviceState.ERROR,
}


class Unreachable(DeviceError):
    """No TCP connection, a reset, a timeout before the answer: retry with backoff."""


class BadAnswer(DeviceError):
    """The device answered wrongly (404, 5xx, not a multipart stream). Retried, slowly."""


class StreamSilent(DeviceError):
    """The stream is open but no part came within the silence threshold."""


CONDITION_OF: tuple[tuple[type[DeviceError], str], ...] = (
    (DeviceAuthError, AUTH_FAILED),
    (StreamSilent, STREAM_SILENT),
    (BadAnswer, BAD_ANSWER),
    (Unreachable, UNREACHABLE),
    (DeviceError, UNREACHABLE),
)
"""Most specific first: the condition an error means."""


def condition_of(exc: BaseException) -> str:
    for kind, condition in CONDITION_OF:
        if isinstance(exc, kind):
            return condition
    return BAD_ANSWER
