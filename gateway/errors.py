"""The project's own small exception tree.

Every module that wraps an external library converts that library's errors into one of
these, so callers decide what to do from ``retryable`` instead of knowing aiohttp,
influxdb-client or sqlite3 exception types.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    retryable: bool = False


class ConfigError(GatewayError):
    """The configuration is invalid; ``problems`` holds every finding, already formatted."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SinkError(GatewayError):
    """A sink could not take a batch."""


class SinkUnavailable(SinkError):
    """Network trouble, 5xx or 429: try the same batch again later.

    ``retry_after`` carries the server's Retry-After hint in seconds, when it sent one.
    """

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SinkRejected(SinkError):
    """400/422: the server refused (some of) the data; resending it unchanged will not help."""


class SinkPartlyStored(SinkRejected):
    """The store refused some lines and stored the rest (InfluxDB's "partial write"):
    the batch is done with; ``refused_lines`` counts what it dropped (at least 1)."""

    def __init__(self, message: str, refused_lines: int) -> None:
        super().__init__(message)
        self.refused_lines = refused_lines


class SinkTooLarge(SinkError):
    """413: the batch is too big for the server; send it in smaller pieces."""


class SinkAuthError(SinkError):
    """401/403/404: credentials, permissions or the database/bucket are wrong; or a 400
    that is not about the lines (a proxy's HTML page, an endpoint that is not a store's).

    Not fixable by retrying soon: the sink is marked failed and retried slowly while the
    buffer keeps everything.
    """


class BufferFailure(GatewayError):
    """The durable buffer could not be used."""


class DeviceError(GatewayError):
    """A device did not answer, or answered wrongly. Retryable: devices come back."""

    retryable = True


class DeviceAuthError(DeviceError):
    """The device answered but refused our credentials (HTTP 401/403, RTSP 401).

    Alive, so not "unreachable", and not fixed by retrying at once: a wrong password
    retried every second also locks the account on many cameras. Not retryable, so a
    supervised task that raises it waits the long restart pause."""

    retryable = False


class CommandRefused(GatewayError):
    """An ops command was not carried out: unknown device, point not allow-listed,
    unsupported by the driver, bad value. The reason goes back to the requester."""
