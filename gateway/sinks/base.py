"""What every sink implements; the forwarder owns retries, splitting and cursors."""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    """A destination for line protocol.

    ``write`` takes newline-separated line protocol (nanosecond precision) and either
    returns (the whole batch is stored) or raises one of the ``gateway.errors.Sink*``
    errors. Sinks do no retrying of their own: the forwarder decides, so the policy is
    the same for every sink.
    """

    name: str

    async def open(self) -> None: ...

    async def write(self, payload: bytes) -> None: ...

    async def close(self) -> None: ...
